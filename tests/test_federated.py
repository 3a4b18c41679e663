"""Federated training across three real Slidebank nodes with Flower's real runtime: a SuperLink
(`slidebank federated coordinator`), three SuperNodes (`slidebank federated join`), each node its
own home, database, key and server. The nodes hold different classes of tissue; the federated model
is held to each node alone and to pooled training on held-out slides; every training read is in
its node's audit; a revoked grant stops its node's contribution; and the bytes between nodes and
coordinator (recorded by a relay in between) carry no pixels."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import SLIDEBANK_BIN, json_lines, run_cli, running_server

torch = pytest.importorskip("torch")

from torch.utils.data import TensorDataset  # noqa: E402

from slidebank.client import Client  # noqa: E402
from slidebank.federated.journal import load_model, read_rounds  # noqa: E402
from slidebank.federated.model import build_model  # noqa: E402
from slidebank.federated.plan import TrainingPlan  # noqa: E402
from slidebank.federated.runtime import FlowerError, flower_bin  # noqa: E402
from slidebank.federated.training import evaluate, plan_patches, pooled, train  # noqa: E402
from slidebank.synth.classes import write_class_slide  # noqa: E402

CLASSES = ("Tumor", "Stroma", "Fat")
# Each node sees two of the three classes: alone, none can tell the third.
NODE_CLASSES = {"north": ("Tumor", "Stroma"), "south": ("Stroma", "Fat"), "east": ("Tumor", "Fat")}
ROUNDS = 3
PLAN = TrainingPlan(classes=CLASSES, rounds=ROUNDS, local_epochs=2, patch_size=64, min_nodes=3, round_timeout=300)


def layout(classes: tuple[str, ...], seed: int) -> list[list[str]]:
    """A 3 x 4 grid of blocks of these classes in a seeded order."""
    rng = np.random.default_rng(seed)
    cells = [classes[i % len(classes)] for i in range(12)]
    rng.shuffle(cells)
    return [cells[r * 4:(r + 1) * 4] for r in range(3)]


try:
    flower_bin()
    FLOWER = True
except FlowerError:
    FLOWER = False
needs_flower = pytest.mark.skipif(not FLOWER, reason="Flower's runtime (.venv-flower) is not installed: make install")


@dataclass
class SlidebankNode:
    name: str
    home: Path
    base: str
    dataset: str
    grant: str
    token_file: Path

    def client(self) -> Client:
        return Client(self.base, self.token_file.read_text().strip(), progress=False)


Layouts = list[list[list[str]]]


def make_node(folder: Path, name: str, datasets: dict[str, Layouts], seed: int) -> tuple[Path, dict[str, str], Path]:
    """A node home with a trainer granted each dataset (slides of these layouts, annotated)."""
    home = folder / name
    run_cli("init", home=home, check=True)
    run_cli("users", "add", "trainer", "--role", "researcher", home=home, check=True)
    run_cli("users", "add", "dac", "--role", "dac_member", home=home, check=True)
    grants = {}
    for index, (dataset, layouts) in enumerate(datasets.items()):
        run_cli("datasets", "create", dataset, "--policy", "Federated training, apply to the DAC",
                "--committee", "dac", home=home, check=True)
        slides = [write_class_slide(folder / f"{name}-{dataset}" / f"{number}.svs", blocks,
                                    seed=seed * 100 + index * 10 + number) for number, blocks in enumerate(layouts)]
        outcomes = json_lines(run_cli("ingest", str(folder / f"{name}-{dataset}"), "--dataset", dataset, "--json",
                                      "--no-qc", home=home, check=True).stdout)  # plans here use no tissue mask
        for slide in slides:
            [slide_id] = [o["slide_id"] for o in outcomes if Path(o["path"]) == slide.path]
            geojson = slide.path.with_suffix(".geojson")
            geojson.write_text(json.dumps(slide.geojson()))
            run_cli("annotations", "import", slide_id, str(geojson), home=home, check=True)
        request = run_cli("access", "request", "--user", "trainer", "--dataset", dataset, "--purpose",
                          "Federated tissue classifier", home=home, check=True).stdout.strip()
        until = (date.today() + timedelta(days=30)).isoformat()
        grants[dataset] = run_cli("access", "approve", request, "--expires", until, "--as", "dac", home=home,
                                  check=True).stdout.strip()
    token_file = folder / f"{name}.token"
    token_file.write_text(run_cli("tokens", "create", "trainer", home=home, check=True).stdout.strip().splitlines()[-1])
    return home, grants, token_file


def in_memory(node: SlidebankNode) -> TensorDataset:
    """A node's training patches, read once through its own server (for the baselines)."""
    with node.client() as bank:
        data = plan_patches(bank, [s["slide_id"] for s in bank.slides(dataset=node.dataset)], PLAN)
        images, targets = zip(*data.__getitems__(list(range(len(data)))), strict=True)
    return TensorDataset(torch.stack(list(images)), torch.tensor(targets))


class Relay:
    """A TCP relay between a SuperNode and the SuperLink that keeps every byte in each direction."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = bytearray()  # node -> coordinator
        self.down = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            try:
                outbound = socket.create_connection(("127.0.0.1", self.target))
            except OSError:  # the coordinator is not up yet: the caller retries
                inbound.close()
                continue
            threading.Thread(target=self._pump, args=(inbound, outbound, self.up), daemon=True).start()
            threading.Thread(target=self._pump, args=(outbound, inbound, self.down), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                with self.lock:
                    record.extend(chunk)
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def write_artifact(name: str, content: dict) -> None:
    """Numbers the closing note quotes, kept with the run's other artifacts."""
    folder = Path(__file__).resolve().parents[1] / "test-artifacts"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps(content, indent=1))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def flower_process(*args: str, log: Path) -> Iterator[subprocess.Popen]:
    """A `slidebank federated` command that becomes a Flower process; it and every process it starts
    are ended afterwards."""
    import psutil

    with log.open("wb") as out:
        process = subprocess.Popen([str(SLIDEBANK_BIN), "federated", *args], stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            for member in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.terminate()
            gone, alive = psutil.wait_procs(family, timeout=10)
            for member in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.kill()


@dataclass
class Federation:
    nodes: dict[str, SlidebankNode]
    held_out: SlidebankNode
    out: Path
    relays: dict[str, Relay]
    logs: Path
    local_data: dict[str, TensorDataset]
    coordinator: str


def wait_for_coordinator(base: str, log: Path, verify: ssl.SSLContext | bool = True) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health", timeout=1, verify=verify).status_code == 200:
                return
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


@contextlib.contextmanager
def three_node_federation(folder: Path) -> Iterator[Federation]:
    """Three nodes and a coordinator, a finished 3-round run, the east node's grant revoked after round 1."""
    logs = folder / "logs"
    logs.mkdir()
    homes = {}
    for seed, (name, classes) in enumerate(NODE_CLASSES.items(), start=1):
        datasets = {f"{name}-tissue": [layout(classes, seed * 10)]}
        if name == "north":  # the held-out slide: every class, on a slide no node trains on
            datasets["held-out"] = [layout(CLASSES, 99)]
        homes[name] = make_node(folder, name, datasets, seed)
    coordinator_port = free_port()
    with contextlib.ExitStack() as stack:
        nodes = {}
        for name, (home, grants, token_file) in homes.items():
            base = stack.enter_context(running_server(home))
            nodes[name] = SlidebankNode(name, home, base, f"{name}-tissue", grants[f"{name}-tissue"], token_file)
        north = nodes["north"]
        held_out = SlidebankNode("north", north.home, north.base, "held-out", homes["north"][1]["held-out"],
                                 north.token_file)
        stack.enter_context(flower_process("coordinator", "--state", str(folder / "coordinator"), "--port",
                                           str(coordinator_port), "--insecure", log=logs / "coordinator.log"))
        wait_for_coordinator(f"http://127.0.0.1:{coordinator_port}", logs / "coordinator.log")
        relays = {}
        for name, node in nodes.items():
            relays[name] = relay = Relay(coordinator_port)
            stack.callback(relay.close)
            stack.enter_context(flower_process(
                "join", "--coordinator", f"127.0.0.1:{relay.port}", "--node", node.base, "--token-file",
                str(node.token_file), "--dataset", node.dataset, "--name", name, "--state", str(folder / f"{name}-flower"),
                "--insecure", log=logs / f"{name}.log"))
        local_data = {name: in_memory(node) for name, node in nodes.items()}  # before any grant goes
        federation = Federation(nodes, held_out, folder / "coordinator" / "runs" / "run", relays, logs, local_data,
                                f"127.0.0.1:{coordinator_port}")
        ran = submit(federation, federation.out, "--rounds", str(ROUNDS), "--local-epochs", str(PLAN.local_epochs),
                     "--patch-size", str(PLAN.patch_size))
        assert ran.returncode == 0, ran.stdout + ran.stderr + "".join(p.read_text() for p in logs.iterdir())
        yield federation


def submit(federation: Federation, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(submit_command(federation, out, *extra), capture_output=True, text=True, timeout=660)


def submit_command(federation: Federation, out: Path, *extra: str) -> list[str]:
    return [str(SLIDEBANK_BIN), "federated", "run", "--coordinator", federation.coordinator, "--out", str(out),
            *[a for c in CLASSES for a in ("--class", c)], "--min-nodes", "3", "--timeout", "600", *extra]


def check_the_federated_model_beats_every_node_alone(federation: Federation) -> None:
    model, provenance = load_model(federation.out)
    assert provenance["status"] == "completed" and len(provenance["rounds"]) == ROUNDS
    epochs = ROUNDS * PLAN.local_epochs  # what each node alone, and the pooled data, get
    with federation.held_out.client() as bank:
        held_out = plan_patches(bank, [s["slide_id"] for s in bank.slides(dataset="held-out")], PLAN)
        assert {held_out.labels.count(name) for name in CLASSES} and len(set(held_out.labels)) == 3
        federated = evaluate(model, held_out, PLAN).accuracy
        alone = {}
        for name, data in federation.local_data.items():
            single = build_model(PLAN.model, len(CLASSES), PLAN.seed)
            train(single, data, PLAN, epochs=epochs)
            alone[name] = evaluate(single, held_out, PLAN).accuracy
        together = build_model(PLAN.model, len(CLASSES), PLAN.seed)
        train(together, pooled(federation.local_data.values()), PLAN, epochs=epochs)
        pooled_accuracy = evaluate(together, held_out, PLAN).accuracy
    report = {"federated": federated, "pooled": pooled_accuracy, **{f"{n} alone": a for n, a in alone.items()},
              "held-out patches": len(held_out)}
    print("held-out accuracy:", json.dumps(report))
    write_artifact("federated-accuracy.json", report)
    assert all(federated > accuracy for accuracy in alone.values()), report
    assert federated >= 0.85, report


def check_every_training_read_is_in_its_nodes_audit_with_its_grant(federation: Federation) -> None:
    nodes = json.loads(federation.out.joinpath("provenance.json").read_text())["nodes"]
    assert set(nodes) == set(NODE_CLASSES)
    for name, node in federation.nodes.items():
        entries = json_lines(run_cli("audit", "show", "--json", home=node.home, check=True).stdout)
        training = [e for e in entries if e["action"] == "patches.train"]
        contributed = nodes[name]["rounds_trained"]
        assert len(training) == len(contributed), (name, training, contributed)
        assert all(e["actor"] == "trainer" and e["grant"] == node.grant and e["dataset"] == node.dataset
                   for e in training)
        assert nodes[name]["grants"] == [node.grant] and nodes[name]["datasets"] == [node.dataset]
        assert contributed == list(range(1, ROUNDS + 1))
        assert nodes[name]["patches"] == len(federation.local_data[name]) * ROUNDS


def check_a_revoked_grant_stops_its_node_at_once(federation: Federation) -> None:
    """A second run; once its first round is in, the east node's committee revokes the grant."""
    out = federation.out.with_name("run-revoked")
    running = subprocess.Popen(submit_command(federation, out, "--rounds", "3"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not read_rounds(out) and running.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    revoked = len(read_rounds(out))  # rounds recorded when the grant went
    east = federation.nodes["east"]
    run_cli("access", "revoke", east.grant, home=east.home, check=True)
    stdout, stderr = running.communicate(timeout=600)
    assert running.returncode == 0, stdout + stderr
    record = json.loads(out.joinpath("provenance.json").read_text())["nodes"]["east"]
    # the round under way then may have read before it went; every later one is refused
    assert 1 in record["rounds_trained"] and all(r <= revoked + 1 for r in record["rounds_trained"]), record
    assert set(range(revoked + 2, 4)) <= set(record["rounds_refused"]) and record["rounds_refused"], record
    assert record["patches"] == len(federation.local_data["east"]) * len(record["rounds_trained"])
    last = next(n for n in read_rounds(out)[-1]["nodes"] if n["node"] == "east")
    assert last["status"] == "refused" and "east-tissue" in last["reason"], last
    trained = [e for e in json_lines(run_cli("audit", "show", "--json", home=east.home, check=True).stdout)
               if e["action"] == "patches.train"]
    # Every read audited, none after the round under way when the grant went (a round may read, then
    # miss the aggregation: audited, not in the provenance).
    assert len(record["rounds_trained"]) <= len(trained) - ROUNDS <= revoked + 1, (trained, record)


def check_no_pixels_pass_between_nodes_and_coordinator(federation: Federation) -> None:
    weights = sum(a.nbytes for a in (p.detach().numpy() for p in build_model(PLAN.model, 3).state_dict().values()))
    north = federation.nodes["north"]
    with north.client() as bank:
        data = plan_patches(bank, [s["slide_id"] for s in bank.slides(dataset=north.dataset)], PLAN)
        images = data.images(list(range(0, len(data), max(1, len(data) // 40))))
    pixels_read = len(data) * PLAN.patch_size**2 * 3 * ROUNDS
    for name, relay in federation.relays.items():
        with relay.lock:
            up, down = bytes(relay.up), bytes(relay.down)
        # the model goes down and comes back each round; a little framing and the metrics besides
        assert 0 < len(up) < ROUNDS * (2 * weights + 256 * 1024), (name, len(up), weights)
        assert len(down) < ROUNDS * (2 * weights + 256 * 1024), (name, len(down), weights)
        assert len(up) < pixels_read / 4, (name, len(up), pixels_read)
    wire = {name: {"up": len(r.up), "down": len(r.down)} for name, r in federation.relays.items()}
    write_artifact("federated-wire.json", {"model_bytes": weights, "rounds": ROUNDS, "pixel_bytes_read_per_node": pixels_read,
                                           "bytes": wire})
    stream = b"".join(bytes(r.up) + bytes(r.down) for r in federation.relays.values())
    rng = np.random.default_rng(0)
    for image in images:  # stretches of the north node's pixel rows appear nowhere on the wire
        row = image[rng.integers(0, image.shape[0])].tobytes()
        start = int(rng.integers(0, len(row) - 48))
        assert row[start:start + 48] not in stream


def check_a_run_writes_only_into_the_coordinators_runs_folder(federation: Federation, folder: Path) -> None:
    again = submit(federation, federation.out, "--rounds", "1")  # the finished run's folder
    assert again.returncode != 0 and "already holds a run" in " ".join((again.stdout + again.stderr).split())
    elsewhere = folder / "elsewhere"
    escaped = submit(federation, elsewhere, "--rounds", "1")
    assert escaped.returncode != 0 and "finished:failed" in escaped.stdout + escaped.stderr
    assert not elsewhere.exists()


def check_secure_aggregation_with_clipping_trains_on_every_node(federation: Federation) -> None:
    """SecAgg+ (the coordinator sees only the sum of the updates) with client-side DP clipping and
    noise: every node still reports who it is and what it read, and the model moves."""
    east = federation.nodes["east"]
    request = run_cli("access", "request", "--user", "trainer", "--dataset", east.dataset, "--purpose",
                      "Federated tissue classifier, again", home=east.home, check=True).stdout.strip()
    until = (date.today() + timedelta(days=30)).isoformat()
    regranted = run_cli("access", "approve", request, "--expires", until, "--as", "dac", home=east.home,
                        check=True).stdout.strip()
    out = federation.out.with_name("run-secagg")
    ran = submit(federation, out, "--rounds", "1", "--secure-aggregation", "--dp-clipping-norm", "10",
                 "--dp-noise-multiplier", "0.01")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    said = " ".join((ran.stdout + ran.stderr).split())
    assert "round 1:" in said and f"east: {len(federation.local_data['east'])} patches" in said, said
    model, provenance = load_model(out)
    assert provenance["options"]["secure_aggregation"] and provenance["options"]["dp_clipping_norm"] == 10
    assert {name: node["rounds_trained"] for name, node in provenance["nodes"].items()} == {n: [1] for n in NODE_CLASSES}
    assert provenance["nodes"]["east"]["grants"] == [regranted]
    initial = build_model(PLAN.model, len(CLASSES), PLAN.seed).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in model.state_dict().items())


@needs_flower
@pytest.mark.slow
def test_three_nodes_train_one_model_and_share_no_pixels(tmp_path: Path) -> None:
    """One federation (setting it up is most of the cost), every claim checked on it in turn."""
    with three_node_federation(tmp_path) as federation:
        check_the_federated_model_beats_every_node_alone(federation)
        check_every_training_read_is_in_its_nodes_audit_with_its_grant(federation)
        check_no_pixels_pass_between_nodes_and_coordinator(federation)
        check_a_revoked_grant_stops_its_node_at_once(federation)
        check_a_run_writes_only_into_the_coordinators_runs_folder(federation, tmp_path)
        check_secure_aggregation_with_clipping_trains_on_every_node(federation)


@needs_flower
@pytest.mark.slow
def test_coordinator_and_node_talk_tls(tmp_path: Path) -> None:
    """The consortium CA from `federated certificates`: the node and `run` check the coordinator's
    certificate, and nothing readable passes between them."""
    home, grants, token_file = make_node(tmp_path, "solo", {"solo-tissue": [layout(CLASSES, 5)]}, 5)
    run_cli("federated", "certificates", str(tmp_path / "tls"), "--host", "127.0.0.1", home=home, check=True)
    port = free_port()
    relay = Relay(port)
    with contextlib.ExitStack() as stack, running_server(home) as base:
        stack.callback(relay.close)
        stack.enter_context(flower_process("coordinator", "--state", str(tmp_path / "coordinator"), "--port", str(port),
                                           "--tls", str(tmp_path / "tls"), log=tmp_path / "coordinator.log"))
        wait_for_coordinator(f"https://127.0.0.1:{port}", tmp_path / "coordinator.log",
                             verify=ssl.create_default_context(cafile=tmp_path / "tls" / "ca.pem"))
        stack.enter_context(flower_process(
            "join", "--coordinator", f"127.0.0.1:{relay.port}", "--node", base, "--token-file", str(token_file),
            "--dataset", "solo-tissue", "--name", "solo", "--state", str(tmp_path / "solo-flower"),
            "--root-certificates", str(tmp_path / "tls" / "ca.pem"), log=tmp_path / "solo.log"))
        out = tmp_path / "coordinator" / "runs" / "tls"
        ran = subprocess.run([str(SLIDEBANK_BIN), "federated", "run", "--coordinator", f"127.0.0.1:{port}",
                              "--out", str(out), *[a for c in CLASSES for a in ("--class", c)], "--min-nodes", "1",
                              "--rounds", "1", "--timeout", "120", "--root-certificates",
                              str(tmp_path / "tls" / "ca.pem")], capture_output=True, text=True, timeout=360)
        logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
        assert ran.returncode == 0, ran.stdout + ran.stderr + logs
        plain = subprocess.run([str(SLIDEBANK_BIN), "federated", "status", "--coordinator", f"127.0.0.1:{port}", "1"],
                               capture_output=True, text=True, timeout=180)
        assert plain.returncode != 0  # a client that does not speak TLS gets nowhere
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["nodes"]["solo"]["rounds_trained"] == [1]
    with relay.lock:
        wire = bytes(relay.up) + bytes(relay.down)
    assert len(relay.up) > 10_000 and b"HTTP/" not in wire and b"solo-tissue" not in wire


def test_join_refuses_a_token_that_reads_nothing(tmp_path: Path) -> None:
    home = tmp_path / "node"
    run_cli("init", home=home, check=True)
    run_cli("users", "add", "trainer", "--role", "researcher", home=home, check=True)
    run_cli("datasets", "create", "closed", "--policy", "Apply to the DAC", home=home, check=True)
    token = tmp_path / "token"
    token.write_text(run_cli("tokens", "create", "trainer", home=home, check=True).stdout.strip().splitlines()[-1])
    with running_server(home) as base:
        joined = run_cli("federated", "join", "--coordinator", "127.0.0.1:1", "--node", base, "--token-file",
                         str(token), "--dataset", "closed", "--insecure", home=home)
        assert joined.returncode != 0 and "may read no slide of closed" in " ".join(joined.stdout.split() + joined.stderr.split())
        token.write_text("sbk_not-a-token")
        joined = run_cli("federated", "join", "--coordinator", "127.0.0.1:1", "--node", base, "--token-file",
                         str(token), "--dataset", "closed", "--insecure", home=home)
        assert joined.returncode != 0 and "cannot read closed" in " ".join(joined.stdout.split() + joined.stderr.split())
    unsure = run_cli("federated", "coordinator", "--state", str(tmp_path / "c"), home=home)
    assert unsure.returncode != 0 and "--insecure" in unsure.stdout + unsure.stderr
    missing = run_cli("federated", "coordinator", "--state", str(tmp_path / "c"), "--tls", str(tmp_path), home=home)
    assert missing.returncode != 0 and "missing TLS files" in " ".join((missing.stdout + missing.stderr).split())


def test_a_plan_is_checked_before_it_is_sent() -> None:
    assert TrainingPlan.from_run_config(PLAN.run_config()) == PLAN
    with pytest.raises(ValueError, match="two different classes"):
        TrainingPlan(classes=("Tumor", "Tumor"))
    with pytest.raises(ValueError, match="SecAgg"):
        TrainingPlan(classes=CLASSES, secure_aggregation=True, min_nodes=2)
    with pytest.raises(ValueError, match="unknown model"):
        TrainingPlan(classes=CLASSES, model="resnet-9000")
