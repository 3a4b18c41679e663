"""Algorithm jobs on Dask distributed: worker processes, an existing scheduler, lost workers,
time and memory limits, cancellation, a server restart in the middle of a job, grants and audit.

The algorithms used here besides QC are a test plug-in package (tests/plugins) registered the way
any third party registers one: an entry point in the `slidebank.algorithms` group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import SLIDEBANK_BIN, json_lines, open_dataset, run_cli
from databases import database_env

PLUGINS = Path(__file__).parent / "plugins"
PROCESSES = {"SLIDEBANK_DASK_PROCESSES": "1", "SLIDEBANK_DASK_WORKERS": "2"}


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder that makes the test algorithms an installed distribution (dist-info + entry points)."""
    folder = tmp_path_factory.mktemp("plugins")
    info = folder / "slidebank_test_algorithms-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slidebank-test-algorithms\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[slidebank.algorithms]\n"
        "sleepy = slidebank_test_algorithms:SLEEPY\n"
        "hog = slidebank_test_algorithms:HOG\n"
        "crash-once = slidebank_test_algorithms:CRASH_ONCE\n"
    )
    return os.pathsep.join([str(folder), str(PLUGINS), os.environ.get("PYTHONPATH", "")])


@pytest.fixture(scope="module")
def jobs_home(tmp_path_factory: pytest.TempPathFactory, aperio_slide, generic_slide) -> tuple[Path, list[str]]:  # noqa: ANN001
    """A node with three slides in an open dataset (QC already ran on them at ingest)."""
    from slidebank.synth import write_synthetic_slide

    home = tmp_path_factory.mktemp("jobs") / "node"
    third = write_synthetic_slide(home.parent / "third.svs", 1200, 1000, seed=11)
    run_cli("init", home=home, check=True)
    open_dataset(home, "public")
    outcomes = json_lines(run_cli("ingest", str(aperio_slide.path), str(generic_slide.path), str(third.path),
                                  "--dataset", "public", "--json", home=home, check=True).stdout)
    return home, sorted(o["slide_id"] for o in outcomes)


def run_job(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = run_cli("run", *args, "--wait", "--json", home=home, env=env)
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def show(home: Path, job_id: str) -> dict:
    return json.loads(run_cli("jobs", "show", job_id, "--json", home=home, check=True).stdout)


def test_ingest_ran_qc_as_a_job(jobs_home: tuple[Path, list[str]]) -> None:
    home, slides = jobs_home
    job = json.loads(run_cli("jobs", "list", "--json", home=home, check=True).stdout)[-1]  # the first job
    assert job["algorithm"] == "qc" and job["state"] == "done" and job["progress"] == {
        "done": 3, "total": 3, "tasks": {"queued": 0, "running": 0, "done": 3, "failed": 0, "cancelled": 0}}
    detail = json.loads(run_cli("slides", "show", slides[0], "--json", home=home, check=True).stdout)
    assert detail["qc"]["tissue_area_mm2"] > 0 and 0 <= detail["qc"]["blur_fraction"] <= 1


def test_job_runs_on_dask_worker_processes_with_provenance(jobs_home: tuple[Path, list[str]]) -> None:
    home, slides = jobs_home
    code, job = run_job(home, "tissue", "--slide", slides[0], "--slide", slides[1], env=PROCESSES)
    assert code == 0 and job["state"] == "done", job
    assert job["scheduler"].startswith("tcp://")  # a LocalCluster of processes, not threads
    runner_pid = next(line for line in job["log"] if "claimed by" in line).split(":")[-3].split()[0]
    for task in job["tasks"]:
        assert task["state"] == "done" and task["attempts"] == 1 and len(task["input_sha256"]) == 64
        assert task["summary"]["worker"].split(":")[1] != runner_pid  # pixels were read in a worker
        assert task["summary"]["values"]["tissue.tissue_area_mm2"] > 0
        assert task["summary"]["heatmaps"] == ["tissue"] and task["summary"]["tiles_read"] >= 1
    assert job["algorithm"] == "tissue" and job["version"] == "1.0.0" and job["parameters"] == {"overview_mpp": 8.0}


def test_job_runs_on_an_existing_scheduler(jobs_home: tuple[Path, list[str]], plugin_path: str, tmp_path: Path) -> None:
    home, slides = jobs_home
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": plugin_path}
    dask = str(Path(sys.executable).with_name("dask"))
    processes = [
        subprocess.Popen([dask, "scheduler", "--scheduler-file", str(scheduler_file), "--no-dashboard",
                          "--port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        processes.append(subprocess.Popen(
            [dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        code, job = run_job(home, "sleepy", "--slide", slides[2], "--param", "seconds=0", "--scheduler", address,
                            env={"PYTHONPATH": plugin_path})
        assert code == 0 and job["state"] == "done" and job["scheduler"] == address, (job["error"], job["log"])
        assert job["tasks"][0]["summary"]["values"]["sleepy.mean_red"] > 0
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)


def test_a_lost_worker_is_replaced_and_the_task_retried(jobs_home: tuple[Path, list[str]], plugin_path: str,
                                                        tmp_path: Path) -> None:
    home, slides = jobs_home
    code, job = run_job(home, "crash-once", "--slide", slides[0], "--param", f"marker_dir={tmp_path}",
                        env={**PROCESSES, "PYTHONPATH": plugin_path})
    assert code == 0 and job["state"] == "done", job
    [task] = job["tasks"]
    crashed_pid = (tmp_path / f"{slides[0]}.crashed").read_text()
    assert task["attempts"] == 2 and task["summary"]["values"]["crash.pid"] != float(crashed_pid)


def test_time_limit_fails_the_job_with_a_reason(jobs_home: tuple[Path, list[str]], plugin_path: str) -> None:
    home, slides = jobs_home
    started = time.monotonic()
    code, job = run_job(home, "sleepy", "--slide", slides[0], "--param", "seconds=60", "--time-limit", "1",
                        env={"PYTHONPATH": plugin_path})
    assert code == 1 and job["state"] == "failed" and "time limit" in job["error"], job
    assert time.monotonic() - started < 30
    assert "time limit" in job["tasks"][0]["error"]


def test_memory_limit_fails_the_task_not_the_worker(jobs_home: tuple[Path, list[str]], plugin_path: str) -> None:
    home, slides = jobs_home
    code, job = run_job(home, "hog", "--slide", slides[0], "--slide", slides[1], "--param", "mib=600",
                        "--memory-limit", "64", env={**PROCESSES, "PYTHONPATH": plugin_path})
    assert code == 1 and job["state"] == "failed"
    for task in job["tasks"]:
        assert task["state"] == "failed" and "over the job's limit of 64 MiB" in task["error"]
        assert task["attempts"] == 1  # a limit is not a lost worker: no retry


def test_bad_requests_are_refused_before_a_job_exists(jobs_home: tuple[Path, list[str]]) -> None:
    home, slides = jobs_home
    before = len(json.loads(run_cli("jobs", "list", "--json", home=home, check=True).stdout))
    for args, message in (
        (("no-such-algorithm", "--slide", slides[0]), "no algorithm 'no-such-algorithm'"),
        (("qc", "--slide", slides[0], "--param", "blur_threshold=soft"), "blur_threshold is a float"),
        (("qc", "--slide", slides[0], "--param", "colour=1"), "qc has no parameter colour"),
        (("qc", "--slide", slides[0], "--param", "tile_size=1"), "tile_size must be at least 32"),
        (("qc", "--slide", "missing-slide"), "no slide 'missing-slide'"),
        (("qc",), "name slides"),
    ):
        result = run_cli("run", *args, home=home)
        assert result.returncode == 2 and message in " ".join(result.stderr.split()), (args, result.stderr)
    assert len(json.loads(run_cli("jobs", "list", "--json", home=home, check=True).stdout)) == before


def test_grants_are_checked_and_processing_is_audited(jobs_home: tuple[Path, list[str]], tmp_path: Path) -> None:
    from slidebank.synth import write_synthetic_slide

    home, slides = jobs_home
    secret = write_synthetic_slide(tmp_path / "secret.svs", 1000, 800, seed=21)
    run_cli("datasets", "create", "restricted", "--policy", "Controlled", "--duo", "DUO:0000007", home=home, check=True)
    [ingested] = json_lines(run_cli("ingest", str(secret.path), "--dataset", "restricted", "--no-qc", "--json",
                                    home=home, check=True).stdout)
    run_cli("users", "add", "bob", "--role", "researcher", home=home, check=True)
    refused = run_cli("run", "tissue", "--slide", ingested["slide_id"], "--as", "bob", home=home)
    assert refused.returncode == 2 and "no slide" in refused.stderr
    code, job = run_job(home, "tissue", "--slide", slides[0], "--as", "bob")  # open dataset: allowed
    assert code == 0 and job["requester"] == "bob"
    events = json_lines(run_cli("audit", "show", "--json", home=home, check=True).stdout)
    processed = [e for e in events if e["action"] == "slide.process" and e["actor"] == "bob"]
    assert processed and processed[-1]["slide_id"] == slides[0] and processed[-1]["detail"]["job"] == job["id"]
    assert any(e["action"] == "job.create" and e["actor"] == "bob" for e in events)
    assert run_cli("audit", "verify", home=home).returncode == 0


def test_cancel_stops_a_running_job(jobs_home: tuple[Path, list[str]], plugin_path: str) -> None:
    home, slides = jobs_home
    env = {**os.environ, "SLIDEBANK_HOME": str(home), **database_env(home), "PYTHONPATH": plugin_path}
    runner = subprocess.Popen([str(SLIDEBANK_BIN), "run", "sleepy", "--slide", slides[1], "--param", "seconds=120",
                               "--wait", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        job = wait_for_job(home, "sleepy", "running", tasks_running=1)
        cancelled = run_cli("jobs", "cancel", job["id"], home=home, check=True)
        assert "cancel requested" in cancelled.stderr
        out, _ = runner.communicate(timeout=60)
    finally:
        runner.kill()
    final = json.loads(out.strip().splitlines()[-1])
    assert runner.returncode == 1 and final["state"] == "cancelled"
    assert final["tasks"][0]["state"] == "cancelled" and (final["tasks"][0]["seconds"] or 0) < 60


def wait_for_job(home: Path, algorithm: str, state: str, tasks_running: int = 0, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = json.loads(run_cli("jobs", "list", "--json", home=home, check=True).stdout)
        for job in jobs:
            if (job["algorithm"] == algorithm and job["state"] == state
                    and job["progress"]["tasks"]["running"] >= tasks_running):
                return job
        time.sleep(0.3)
    raise AssertionError(f"no {state} {algorithm} job within {timeout} s")


@pytest.fixture
def server_factory(jobs_home: tuple[Path, list[str]], plugin_path: str) -> Iterator:  # noqa: ANN401
    """Start `slidebank serve` processes in their own process group, so a test can SIGKILL them."""
    started: list[subprocess.Popen] = []

    def start(extra_env: dict[str, str]) -> tuple[str, subprocess.Popen]:
        home, _ = jobs_home
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "SLIDEBANK_HOME": str(home), **database_env(home), "PYTHONPATH": plugin_path,
               "SLIDEBANK_DASK_WORKERS": "1", **extra_env}
        process = subprocess.Popen([str(SLIDEBANK_BIN), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return base, process
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)


def test_a_job_survives_a_crash_of_the_api_server(jobs_home: tuple[Path, list[str]], server_factory) -> None:  # noqa: ANN001
    home, slides = jobs_home
    token = run_cli("tokens", "create", "admin", home=home, check=True).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    first, first_process = server_factory({})
    created = httpx.post(f"{first}/api/jobs", headers=headers, timeout=10,
                         json={"algorithm": "sleepy", "slides": slides, "parameters": {"seconds": 2}})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{first}/api/jobs/{job_id}", headers=headers).json()["progress"]["tasks"]["done"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(first_process.pid, signal.SIGKILL)  # the server, its job loop and its Dask cluster die at once
    first_process.wait(timeout=30)
    interrupted = show(home, job_id)
    assert interrupted["state"] == "running" and interrupted["progress"]["done"] < 3  # left mid-way

    second, _ = server_factory({"SLIDEBANK_JOB_STALE_SECONDS": "1"})
    deadline = time.monotonic() + 90
    while (job := httpx.get(f"{second}/api/jobs/{job_id}", headers=headers).json())["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["state"] == "done", job
    attempts = sorted(task["attempts"] for task in job["tasks"])
    assert attempts[0] == 1 and all(task["state"] == "done" for task in job["tasks"])  # finished work not redone
    assert sum("claimed by" in line for line in job["log"]) == 2


def test_nuclei_and_onnx_classifier_write_annotations_heatmaps_and_values(jobs_home: tuple[Path, list[str]]) -> None:
    home, slides = jobs_home
    code, first = run_job(home, "nuclei", "--slide", slides[2], "--param", "max_tiles=2")
    assert code == 0, first
    listed = json.loads(run_cli("annotations", "list", slides[2], "--json", "--limit", "100000", home=home,
                                check=True).stdout)
    nuclei = [f for f in listed["features"] if f["slidebank"]["class"] == "Nucleus"]
    assert len(nuclei) == first["tasks"][0]["summary"]["features"] > 20
    assert {f["slidebank"]["author"] for f in nuclei} == {"nuclei@1.0.0"}
    assert {f["slidebank"]["job"] for f in nuclei} == {first["id"]}  # provenance: the run that wrote them
    assert all(f["geometry"]["type"] == "Polygon" and f["properties"]["measurements"]["area_px"] > 0 for f in nuclei)
    code, second = run_job(home, "nuclei", "--slide", slides[2], "--param", "max_tiles=2")
    again = json.loads(run_cli("annotations", "list", slides[2], "--json", "--limit", "100000", home=home,
                               check=True).stdout)
    assert code == 0 and again["total"] == listed["total"]  # the latest run replaces the earlier one

    code, classified = run_job(home, "patch-classifier", "--slide", slides[2], "--param", "mpp=1")
    assert code == 0, classified
    values = classified["tasks"][0]["summary"]["values"]
    assert values["classifier.patches"] > 0 and 0 < values["classifier.mean_score"] < 1
    detail = json.loads(run_cli("slides", "show", slides[2], "--json", home=home, check=True).stdout)
    assert detail["facts"]["classifier"]["patches"] == values["classifier.patches"]
    for path in ("/etc/passwd", "../catalog.sqlite", "/nonexistent.onnx"):  # a path is never a model
        refused = run_cli("run", "patch-classifier", "--slide", slides[2], "--param", f"model={path}", home=home)
        assert refused.returncode != 0 and "model must match" in refused.stderr, refused.stderr
    unknown = run_cli("run", "patch-classifier", "--slide", slides[2], "--param", "model=tumour", "--wait",
                      "--json", home=home)
    failed = json.loads(unknown.stdout.strip().splitlines()[-1])
    assert unknown.returncode == 1 and "no model named 'tumour' is installed" in failed["tasks"][0]["error"]
    from slidebank.algorithms.classifier import demo_model

    model = home.parent / "tumour.onnx"
    model.write_bytes(demo_model())
    assert run_cli("models", "add", "tumour", str(home / "catalog.sqlite"), home=home).returncode == 2  # not ONNX
    run_cli("models", "add", "tumour", str(model), home=home, check=True)
    code, installed = run_job(home, "patch-classifier", "--slide", slides[2], "--param", "mpp=1", "--param",
                              "model=tumour")
    assert code == 0 and installed["tasks"][0]["summary"]["values"] == values  # the same model, by name
