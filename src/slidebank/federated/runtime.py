"""Flower's runtime as Slidebank starts it: a SuperLink (the coordinator), SuperNodes (one per
joining Slidebank node) and `flwr` for submitting and following runs.

Flower 1.42 pins older FastAPI, Starlette, Typer and Rich than Slidebank's, so it lives in its own
virtualenv (`.venv-flower`, made by `make install`) that falls back on Slidebank's for everything
else (torch, the SDK): see the Makefile. Nothing here imports flwr; the processes do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from slidebank.federated.certificates import CoordinatorTls
from slidebank.federated.journal import PROVENANCE_FILE, RUNS_ROOT_VARIABLE, holds_run, read_rounds
from slidebank.federated.plan import TrainingPlan

FLOWER_VERSION = "1.42.0"
CONNECTION = "slidebank"
FINISHED = "finished:"
STATUS_EVERY_S = 10.0


class FlowerError(RuntimeError):
    """Flower's runtime is missing, refused a command, or a run did not end as asked."""


def flower_bin() -> Path:
    """The folder of Flower's commands: `$SLIDEBANK_FLOWER_BIN`, else `.venv-flower/bin` beside this
    environment, else wherever `flower-superlink` is on the PATH."""
    candidates = [os.environ.get("SLIDEBANK_FLOWER_BIN", ""), str(Path(sys.prefix).parent / ".venv-flower" / "bin")]
    on_path = shutil.which("flower-superlink")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for folder in filter(None, candidates):
        if (Path(folder) / "flower-superlink").exists():
            return Path(folder)
    raise FlowerError(f"Flower {FLOWER_VERSION} is not installed: run `make install` (it makes .venv-flower), "
                      "or point SLIDEBANK_FLOWER_BIN at the bin folder of an environment with flwr and slidebank")


def flower_env(home: Path) -> dict[str, str]:
    """One FLWR_HOME per process (Flower keeps apps and connections there); its commands on the PATH
    (the SuperLink starts its executors by name); no telemetry, no update checks."""
    env = dict(os.environ)
    env.update({"FLWR_HOME": str(home), "PATH": f"{flower_bin()}{os.pathsep}{env.get('PATH', '')}",
                "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"})
    home.mkdir(parents=True, exist_ok=True)
    return env


def runs_root(state: Path) -> Path:
    """The one folder a coordinator's runs write their models and provenance into."""
    return state / "runs"


def coordinator_env(state: Path) -> dict[str, str]:
    env = flower_env(state / "flwr-home")
    env[RUNS_ROOT_VARIABLE] = str(runs_root(state))
    runs_root(state).mkdir(parents=True, exist_ok=True)
    return env


def coordinator_command(state: Path, host: str, port: int, tls: CoordinatorTls | None) -> list[str]:
    """The SuperLink: nodes, `flwr` and the server app all reach it on `host:port` (TLS with `tls`,
    else plain); runs survive a restart in `state/superlink.db`; apps run with the installed code
    (no per-run installs)."""
    security = (["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.certificate), "--ssl-keyfile", str(tls.key)]
                if tls else ["--insecure"])
    return [str(flower_bin() / "flower-superlink"), *security, "--host", host, "--port", str(port),
            "--database", str(state / "superlink.db"), "--disable-runtime-dependency-installation"]


def node_config(values: Mapping[str, str]) -> str:
    """Flower's `--node-config` syntax: space-separated TOML `key="value"` pairs."""
    return " ".join(f"{key}={json.dumps(str(value))}" for key, value in values.items())


def node_command(coordinator: str, host: str, port: int, values: Mapping[str, str],
                 root_certificates: Path | None) -> list[str]:
    """A SuperNode joined to `coordinator` (trusting the CA in `root_certificates`, else plain);
    `host:port` is its own app runtime (local only)."""
    security = ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
    return [str(flower_bin() / "flower-supernode"), *security, "--superlink", coordinator,
            "--host", host, "--port", str(port), "--node-config", node_config(values)]


def app_folder(into: Path) -> Path:
    """A copy of the Flower App definition (`flwr run` wants a folder named like the project)."""
    folder = into / "slidebank-federated"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("app") / "pyproject.toml", folder / "pyproject.toml")
    return folder


def toml_value(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


class Federation:
    """`flwr` pointed at one coordinator, from a private FLWR_HOME."""

    def __init__(self, coordinator: str, root_certificates: Path | None = None) -> None:
        self.coordinator = coordinator
        self._home = tempfile.TemporaryDirectory(prefix="slidebank-flwr-")
        self.env = flower_env(Path(self._home.name))
        security = (f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}\ninsecure = false\n"
                    if root_certificates else "insecure = true\n")
        (Path(self._home.name) / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = {json.dumps(coordinator)}\n{security}')

    def close(self) -> None:
        self._home.cleanup()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _flwr(self, *args: str, timeout: float = 120) -> dict:
        try:
            done = subprocess.run([str(flower_bin() / "flwr"), *args, "--format", "json"], env=self.env,
                                  capture_output=True, text=True, timeout=timeout, cwd=self._home.name)
        except subprocess.TimeoutExpired as error:
            raise FlowerError(f"flwr {args[0]} did not answer within {timeout:g} s "
                              f"(is the coordinator at {self.coordinator} up?)") from error
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError:
            answer = {"success": False, "error-message": (done.stdout + done.stderr).strip()[-2000:]}
        if done.returncode != 0 or not answer.get("success", True):
            raise FlowerError(f"flwr {args[0]}: {answer.get('error-message') or done.stderr.strip()[-2000:]}")
        return answer

    def submit(self, plan: TrainingPlan, output: Path) -> int:
        """Start a run of `plan`; the model and its provenance will be written to `output`, a folder
        inside the coordinator's `runs` folder on its machine (the server app refuses any other)."""
        output = Path(output).resolve()
        if holds_run(output):
            raise FlowerError(f"{output} already holds a run: choose another output folder")
        config = {**plan.run_config(), "output-dir": str(output)}
        overrides = " ".join(f"{key}={toml_value(value)}" for key, value in config.items())
        answer = self._flwr("run", str(app_folder(Path(self._home.name))), CONNECTION, "--run-config", overrides)
        return int(answer["run-id"])

    def status(self, run_id: int) -> str:
        """`pending`, `starting`, `running`, or `finished:completed|failed|stopped`."""
        runs = self._flwr("ls", CONNECTION, "--run-id", str(run_id))["runs"]
        return str(runs[0]["status"]) if runs else "unknown"

    def stop(self, run_id: int) -> None:
        self._flwr("stop", str(run_id), CONNECTION)

    def wait(self, run_id: int, output: Path, timeout_s: float,
             on_round: Callable[[dict], None] = lambda entry: None) -> str:
        """Follow a run until it ends, calling `on_round` with each round record as it is written;
        a run still going after `timeout_s` is stopped (Flower would wait for nodes forever).

        Rounds are read from the run's folder twice a second; the coordinator is asked for the run's
        state every STATUS_EVERY_S, or at once when the provenance appears (each `flwr ls` is a
        process that costs about a second of CPU)."""
        deadline = time.monotonic() + timeout_s
        next_status = 0.0
        seen = 0
        while True:
            rounds = read_rounds(output)
            for entry in rounds[seen:]:
                on_round(entry)
            seen = len(rounds)
            if (output / PROVENANCE_FILE).exists() or time.monotonic() >= next_status:
                status = self.status(run_id)
                if status.startswith(FINISHED):
                    for entry in read_rounds(output)[seen:]:
                        on_round(entry)
                    return status
                next_status = time.monotonic() + STATUS_EVERY_S
            if time.monotonic() > deadline:
                self.stop(run_id)
                raise FlowerError(f"run {run_id} still {status} after {timeout_s:g} s: stopped "
                                  "(too few nodes joined? see `slidebank federated status`)")
            time.sleep(0.5)
