"""What a federated run leaves behind on the coordinator: per-round records as they happen
(`rounds.jsonl`), the final model (`model.pt`) and its provenance (`provenance.json`): which
nodes, which datasets, which grants, how many patches each, round by round.

No flwr import: the CLI and tests read runs with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slidebank.federated.model import build_model
from slidebank.federated.plan import TrainingPlan

ROUNDS_FILE = "rounds.jsonl"
PROVENANCE_FILE = "provenance.json"
MODEL_FILE = "model.pt"
# What a node may report besides its parameters: scalars under these names, nothing else.
NODE_METRICS = {"node": str, "dataset": str, "status": str, "reason": str, "grant": str, "declaration": str,
                "slides": int, "patches": int, "loss": float, "accuracy": float}
MAX_TEXT = 300


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def node_report(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """A node's round metrics if they are exactly what a node may send (known keys, scalar values,
    short texts); None otherwise: the reply is then refused, whatever else it carries."""
    if not set(metrics) <= set(NODE_METRICS):
        return None
    report: dict[str, Any] = {}
    for key, value in metrics.items():
        kind = NODE_METRICS[key]
        if kind is str and not (isinstance(value, str) and len(value) <= MAX_TEXT):
            return None
        if kind is not str and (isinstance(value, (str, bytes)) or not isinstance(value, (int, float))):
            return None
        report[key] = kind(value)
    return report


@dataclass
class RunJournal:
    """Appends round records and writes the final model with its provenance into `folder`."""

    folder: Path
    run_id: int
    plan: TrainingPlan
    options: dict[str, Any]

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.started = now()
        self.rounds: list[dict[str, Any]] = []
        (self.folder / ROUNDS_FILE).write_text("")

    def record_round(self, server_round: int, reports: Sequence[dict[str, Any]], failures: Sequence[str]) -> None:
        entry = {"round": server_round, "time": now(), "nodes": list(reports), "failures": list(failures),
                 "aggregated_from": sum(1 for r in reports if r.get("status") == "trained")}
        self.rounds.append(entry)
        with (self.folder / ROUNDS_FILE).open("a") as out:
            out.write(json.dumps(entry) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def finish(self, model: nn.Module, status: str) -> dict[str, Any]:
        """Write the model and its provenance (the model first: a provenance always names a file that exists)."""
        target = self.folder / MODEL_FILE
        torch.save(model.state_dict(), target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
        provenance = {
            "run_id": self.run_id, "status": status, "started": self.started, "finished": now(),
            "plan": self.plan.run_config(), "options": self.options,
            "model": {"file": MODEL_FILE, "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                      "name": self.plan.model, "classes": list(self.plan.classes)},
            "nodes": contributions(self.rounds), "rounds": self.rounds,
        }
        (self.folder / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
        return provenance


def contributions(rounds: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per node: its datasets and grants, patches read for training, rounds trained and refused."""
    nodes: dict[str, dict[str, Any]] = {}
    for entry in rounds:
        for report in entry["nodes"]:
            node = nodes.setdefault(report.get("node", "?"), {"datasets": [], "grants": [], "patches": 0,
                                                               "rounds_trained": [], "rounds_refused": []})
            for key, value in (("datasets", report.get("dataset")), ("grants", report.get("grant"))):
                if value and value not in node[key]:
                    node[key].append(value)
            if report.get("status") == "trained":
                node["patches"] += int(report.get("patches", 0))
                node["rounds_trained"].append(entry["round"])
            else:
                node["rounds_refused"].append(entry["round"])
    return nodes


def read_rounds(folder: Path) -> list[dict[str, Any]]:
    """The rounds recorded so far (a line still being written is left for the next read)."""
    path = Path(folder) / ROUNDS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


RUNS_ROOT_VARIABLE = "SLIDEBANK_FEDERATED_RUNS"


def run_folder(requested: str, root: str | None) -> Path:
    """Where a run may write: inside the coordinator's runs folder (`slidebank federated coordinator`
    sets it), and not over another run. Whoever submits a run names the folder; a name or path
    outside the root is refused, so a plan cannot write anywhere the coordinator can."""
    if not root:
        raise ValueError(f"{RUNS_ROOT_VARIABLE} is not set: start the coordinator with `slidebank federated coordinator`")
    base = Path(root).resolve()
    folder = (base / requested).resolve() if requested else base / "unnamed"
    if folder == base or not folder.is_relative_to(base):
        raise ValueError(f"a run's output folder is inside {base}, not {requested!r}")
    if holds_run(folder):
        raise ValueError(f"{folder} already holds a run: choose another output folder")
    return folder


def holds_run(folder: Path) -> bool:
    """Whether a run has written into `folder` (a new run there would overwrite its record)."""
    return (folder / ROUNDS_FILE).exists() or (folder / PROVENANCE_FILE).exists()


def load_model(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A finished run's model (checked against its recorded digest) and its provenance."""
    folder = Path(folder)
    provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    weights = folder / provenance["model"]["file"]
    if hashlib.sha256(weights.read_bytes()).hexdigest() != provenance["model"]["sha256"]:
        raise ValueError(f"{weights} is not the model this run wrote (its digest differs)")
    model = build_model(provenance["model"]["name"], len(provenance["model"]["classes"]))
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model, provenance
