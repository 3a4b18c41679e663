"""`slidebank federated …`: a consortium trains one model on slides that never leave their nodes.

    slidebank federated certificates tls/ --host coord.example.org               # a consortium CA, once
    slidebank federated coordinator --state DIR --port 9092 --tls tls/          # the coordinating server
    slidebank federated join --coordinator HOST:9092 --node https://node-a --token-file T --dataset D \
        --root-certificates tls/ca.pem
    slidebank federated run --coordinator HOST:9092 --class Tumor --class Stroma --rounds 5 --out DIR/runs/RUN
    slidebank federated show DIR/runs/RUN        # per-round metrics, who contributed what, the model's digest
    slidebank federated evaluate DIR/runs/RUN --node URL --token-file T --dataset HELD_OUT
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from slidebank.cli.common import JsonOption, console, fail, print_json

federated_app = typer.Typer(help="Federated training across Slidebank nodes (Flower): pixels stay home.",
                            no_args_is_help=True)

InsecureOption = Annotated[bool, typer.Option("--insecure", help="Plain HTTP between coordinator and nodes "
                                              "(a private network or a tunnel only), instead of TLS")]
CoordinatorOption = Annotated[str, typer.Option("--coordinator", help="The coordinator's HOST:PORT")]
RootCertificatesOption = Annotated[Optional[Path], typer.Option(
    "--root-certificates", help="The consortium CA (PEM) the coordinator's certificate is checked against "
    "(without it: plain HTTP, for a coordinator started with --insecure)")]


def _one_security(tls: object, insecure: bool, what: str) -> None:
    if bool(tls) == insecure:
        fail(f"say how coordinator and nodes talk: {what}, or --insecure on a private network or a tunnel")


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _runtime() -> Any:
    try:
        from slidebank.federated import runtime
    except ImportError as error:
        fail(f"federated training needs PyTorch ({error}): pip install 'slidebank[train]'")
    return runtime


def _exec(command: list[str], env: dict[str, str]) -> None:
    """Become the Flower process: signals (Ctrl-C, a service manager's stop) reach it directly."""
    os.execve(command[0], command, env)


@federated_app.command("certificates")
def certificates(
    folder: Annotated[Path, typer.Argument(help="Where to write ca.pem, coordinator.pem and their keys")],
    hosts: Annotated[list[str], typer.Option("--host", help="A name or address nodes reach the coordinator by")],
) -> None:
    """Make a consortium CA and the coordinator's certificate (give ca.pem to every node; keep the
    keys on the coordinator). A consortium with its own PKI uses its files instead."""
    from slidebank.federated.certificates import write_certificates

    files = write_certificates(folder, hosts)
    console.print(f"CA {files.ca} (for the nodes), certificate {files.certificate} and key {files.key} "
                  "(for the coordinator)")


@federated_app.command("coordinator")
def coordinator(
    state: Annotated[Path, typer.Option(help="Folder of the coordinator's state (runs survive restarts)")],
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port nodes and `federated run` connect to")] = 9092,
    tls: Annotated[Optional[Path], typer.Option(help="Folder with ca.pem, coordinator.pem and coordinator.key "
                                                "(`federated certificates`)")] = None,
    insecure: InsecureOption = False,
) -> None:
    """Run the coordinating server (Flower's SuperLink) in the foreground."""
    _one_security(tls, insecure, "--tls FOLDER")
    runtime = _runtime()
    from slidebank.federated.certificates import CoordinatorTls

    files = CoordinatorTls.in_folder(tls.resolve()) if tls else None
    if files and files.missing():
        fail(f"missing TLS files: {', '.join(map(str, files.missing()))} (make them with `federated certificates`)")
    try:
        state.mkdir(parents=True, exist_ok=True)
        command = runtime.coordinator_command(state.resolve(), host, port, files)
        env = runtime.coordinator_env(state.resolve())
    except runtime.FlowerError as error:
        fail(str(error))
    console.print(f"coordinator on {host}:{port}, state in {state}, runs write into {runtime.runs_root(state)}")
    _exec(command, env)


@federated_app.command("join")
def join(
    coordinator_address: CoordinatorOption,
    node: Annotated[str, typer.Option("--node", help="This node's Slidebank URL (the node reads its own slides)")],
    token_file: Annotated[Path, typer.Option(help="File holding the API token of the reader whose grant trains")],
    dataset: Annotated[str, typer.Option(help="The dataset this node trains on")],
    name: Annotated[Optional[str], typer.Option(help="How the run's provenance names this node")] = None,
    state: Annotated[Optional[Path], typer.Option(help="Folder of this node's Flower state")] = None,
    runtime_port: Annotated[int, typer.Option(help="Local port of the node's app runtime (0: any free one)")] = 0,
    root_certificates: RootCertificatesOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Join a node to the coordinator (Flower's SuperNode, in the foreground). Checks first that the
    token reads slides of the dataset, so a wrong token or a missing grant fails here, not mid-run."""
    _one_security(root_certificates, insecure, "--root-certificates CA.pem")
    runtime = _runtime()
    from slidebank.client import Client, SlidebankError

    try:
        token = token_file.read_text().strip()
        with Client(node, token, progress=False) as bank:
            who = bank.me()
            readable = next(iter(bank.slides(dataset=dataset)), None)
    except (OSError, SlidebankError) as error:
        fail(f"cannot read {dataset} at {node}: {error}")
    if readable is None:
        fail(f"{who.get('name', 'this token')} may read no slide of {dataset} at {node}: request access first")
    host = "127.0.0.1"
    label = name or dataset
    if state is None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", label):
        fail(f"{label!r} cannot name a state folder: give --state, or a --name of letters, digits, '.', '_', '-'")
    folder = (state or Path.home() / ".slidebank" / "federated" / label).resolve()
    values = {"slidebank-url": node, "token-file": str(token_file.resolve()), "dataset": dataset,
              "node-name": name or f"{node} {dataset}"}
    try:
        command = runtime.node_command(coordinator_address, host, runtime_port or _free_port(host), values,
                                       root_certificates.resolve() if root_certificates else None)
        env = runtime.flower_env(folder / "flwr-home")
    except runtime.FlowerError as error:
        fail(str(error))
    console.print(f"node {values['node-name']} joining {coordinator_address} as {who.get('name')}")
    _exec(command, env)


@federated_app.command("run")
def run(
    coordinator_address: CoordinatorOption,
    out: Annotated[Path, typer.Option(help="Folder for the model and its provenance, inside the coordinator's "
                                      "STATE/runs on its machine")],
    classes: Annotated[list[str], typer.Option("--class", help="An annotation class to learn (two or more)")],
    model: Annotated[str, typer.Option(help="small-cnn or colour-logistic")] = "small-cnn",
    rounds: Annotated[int, typer.Option(help="Federated rounds")] = 3,
    local_epochs: Annotated[int, typer.Option(help="Epochs each node trains per round")] = 2,
    batch_size: Annotated[int, typer.Option()] = 32,
    learning_rate: Annotated[float, typer.Option(help="Adam's step size")] = 0.003,
    patch_size: Annotated[int, typer.Option(help="Patch size in pixels")] = 64,
    level: Annotated[int, typer.Option(help="Stored level the patches are cut from")] = 0,
    stride: Annotated[int, typer.Option(help="Grid step in pixels (0: the patch size)")] = 0,
    random: Annotated[int, typer.Option(help="Random patches per slide instead of a grid (0: grid)")] = 0,
    tissue: Annotated[Optional[float], typer.Option(help="Least tissue fraction of a patch (QC mask)")] = None,
    min_overlap: Annotated[float, typer.Option(help="Fraction of a patch its class must cover")] = 0.5,
    seed: Annotated[int, typer.Option()] = 0,
    min_nodes: Annotated[int, typer.Option(help="Nodes that must take part in every round")] = 2,
    secure_aggregation: Annotated[bool, typer.Option("--secure-aggregation", help="SecAgg+: the coordinator "
                                                     "sees only the sum of the nodes' updates")] = False,
    dp_clipping_norm: Annotated[float, typer.Option(help="Clip each node's update to this L2 norm (0: off)")] = 0.0,
    dp_noise_multiplier: Annotated[float, typer.Option(help="Gaussian noise, in clipping norms")] = 0.0,
    wait: Annotated[bool, typer.Option(help="Follow the run, round by round, until it ends")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait before stopping the run")] = 3600.0,
    root_certificates: RootCertificatesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a training plan to the coordinator; with --wait, print each round and the result."""
    runtime = _runtime()
    from slidebank.federated.plan import PlanError, TrainingPlan

    try:
        plan = TrainingPlan(classes=tuple(classes), model=model, rounds=rounds, local_epochs=local_epochs,
                            batch_size=batch_size, learning_rate=learning_rate, patch_size=patch_size, level=level,
                            stride=stride, random=random, tissue=-1.0 if tissue is None else tissue,
                            min_overlap=min_overlap, seed=seed, min_nodes=min_nodes,
                            secure_aggregation=secure_aggregation, dp_clipping_norm=dp_clipping_norm,
                            dp_noise_multiplier=dp_noise_multiplier)
    except PlanError as error:
        fail(str(error))
    try:
        with runtime.Federation(coordinator_address, root_certificates) as federation:
            run_id = federation.submit(plan, out)
            if not as_json:
                console.print(f"run {run_id} submitted; its model and provenance go to {out}")
            if not wait:
                if as_json:
                    print_json({"run_id": run_id, "out": str(out)})
                return
            status = federation.wait(run_id, out, timeout, on_round=lambda entry: None if as_json else _print_round(entry))
    except runtime.FlowerError as error:
        fail(str(error))
    if as_json:
        print_json({"run_id": run_id, "status": status, "out": str(out)})
    else:
        console.print(f"run {run_id}: {status}")
        if (out / "provenance.json").exists():
            show(out)
    if status != "finished:completed":
        raise typer.Exit(1)


def _print_round(entry: dict[str, Any]) -> None:
    parts = []
    for report in entry["nodes"]:
        if report.get("status") == "trained":
            parts.append(f"{report['node']}: {report['patches']} patches, loss {report['loss']:.3f}, "
                         f"accuracy {report['accuracy']:.3f}")
        else:
            parts.append(f"{report.get('node', '?')}: {report.get('status')} ({report.get('reason', '')})")
    console.print(f"round {entry['round']}: " + "; ".join(parts + entry.get("failures", [])))


@federated_app.command("status")
def status(coordinator_address: CoordinatorOption, run_id: Annotated[int, typer.Argument()],
           root_certificates: RootCertificatesOption = None) -> None:
    """A run's state at the coordinator: pending, running, finished:completed|failed|stopped."""
    runtime = _runtime()
    try:
        with runtime.Federation(coordinator_address, root_certificates) as federation:
            console.print(federation.status(run_id))
    except runtime.FlowerError as error:
        fail(str(error))


@federated_app.command("stop")
def stop(coordinator_address: CoordinatorOption, run_id: Annotated[int, typer.Argument()],
         root_certificates: RootCertificatesOption = None) -> None:
    """Stop a run (a node that never joins would otherwise keep it waiting)."""
    runtime = _runtime()
    try:
        with runtime.Federation(coordinator_address, root_certificates) as federation:
            federation.stop(run_id)
    except runtime.FlowerError as error:
        fail(str(error))


@federated_app.command("show")
def show(out: Annotated[Path, typer.Argument(help="A run's output folder")], as_json: JsonOption = False) -> None:
    """Per-round metrics and, once finished, the model's provenance: nodes, datasets, grants, patches."""
    import json

    from slidebank.federated.journal import PROVENANCE_FILE, contributions, read_rounds

    provenance_path = out / PROVENANCE_FILE
    provenance = json.loads(provenance_path.read_text()) if provenance_path.exists() else None
    rounds = provenance["rounds"] if provenance else read_rounds(out)
    if not rounds and provenance is None:
        fail(f"{out} holds no federated run")
    nodes = provenance["nodes"] if provenance else contributions(rounds)
    if as_json:
        print_json(provenance or {"status": "running", "rounds": rounds, "nodes": nodes})
        return
    for entry in rounds:
        _print_round(entry)
    table = Table("node", "datasets", "grants", "patches", "rounds trained", "rounds refused")
    for name, node in nodes.items():
        table.add_row(name, ", ".join(node["datasets"]), ", ".join(node["grants"]) or "open data",
                      str(node["patches"]), ",".join(map(str, node["rounds_trained"])) or "-",
                      ",".join(map(str, node["rounds_refused"])) or "-")
    console.print(table)
    if provenance:
        console.print(f"model {provenance['model']['file']} sha256 {provenance['model']['sha256']} "
                      f"({provenance['status']}, {provenance['finished']})")


@federated_app.command("evaluate")
def evaluate(
    out: Annotated[Path, typer.Argument(help="A finished run's output folder")],
    node: Annotated[str, typer.Option("--node", help="Slidebank URL holding the held-out slides")],
    token_file: Annotated[Path, typer.Option(help="File holding an API token that reads them")],
    dataset: Annotated[str, typer.Option(help="The held-out dataset")],
    as_json: JsonOption = False,
) -> None:
    """The run's model scored on held-out slides (their annotation classes are the truth)."""
    from slidebank.client import Client, SlidebankError
    from slidebank.federated.journal import load_model
    from slidebank.federated.plan import TrainingPlan
    from slidebank.federated.training import evaluate as score
    from slidebank.federated.training import plan_patches

    try:
        model, provenance = load_model(out)
        plan = TrainingPlan.from_run_config(provenance["plan"])
        with Client(node, token_file.read_text().strip(), progress=False) as bank:
            slides = [s["slide_id"] for s in bank.slides(dataset=dataset)]
            if not slides:
                fail(f"no readable slide in {dataset}")
            scores = score(model, plan_patches(bank, slides, plan), plan)
    except (OSError, ValueError, SlidebankError) as error:
        fail(str(error))
    if as_json:
        print_json({"dataset": dataset, "slides": len(slides), **scores.as_dict()})
    else:
        console.print(f"{dataset}: accuracy {scores.accuracy:.3f}, loss {scores.loss:.3f} "
                      f"on {scores.examples} patches of {len(slides)} slides")
