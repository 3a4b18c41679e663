"""A federated training plan: what every node trains and how the coordinator aggregates.

The plan travels as Flower's run config (flat keys of numbers, strings and booleans); node-side
facts (which Slidebank, which dataset, which token) are each node's own `node config`, set when it
joins and never seen by the coordinator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from slidebank.federated.model import MODELS
from slidebank.patches import Sampling

RunConfig = dict[str, bool | int | float | str]


class PlanError(ValueError):
    """A plan that cannot be run (unknown model, too few classes, nonsense numbers)."""


@dataclass(frozen=True)
class TrainingPlan:
    """`classes`: annotation classes to learn (a patch's label is the class covering `min_overlap` of
    it). Patches: `patch_size` pixels at `level`, on a grid of `stride` (default the patch size) or
    `random` places per slide; `tissue` as in `Sampling`. Each round every node trains
    `local_epochs` over its patches and the coordinator averages (FedAvg), optionally with SecAgg+
    (`secure_aggregation`) and client-side differential-privacy clipping (`dp_clipping_norm` > 0,
    with Gaussian noise `dp_noise_multiplier`)."""

    classes: tuple[str, ...]
    model: str = "small-cnn"
    rounds: int = 3
    local_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 0.003
    patch_size: int = 64
    level: int = 0
    stride: int = 0
    random: int = 0
    tissue: float = -1.0  # below 0: no tissue mask
    min_overlap: float = 0.5
    seed: int = 0
    min_nodes: int = 2
    round_timeout: float = 900.0
    secure_aggregation: bool = False
    dp_clipping_norm: float = 0.0
    dp_noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise PlanError(f"unknown model {self.model!r}: choose one of {', '.join(sorted(MODELS))}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes) or not all(self.classes):
            raise PlanError("name at least two different classes")
        if any("," in name for name in self.classes):
            raise PlanError("class names cannot contain commas")
        if not (1 <= self.rounds <= 10_000 and 1 <= self.local_epochs <= 1000 and 1 <= self.batch_size <= 4096):
            raise PlanError("rounds, local epochs and batch size are positive (and sane)")
        if not 0 < self.learning_rate < 10:
            raise PlanError("the learning rate is between 0 and 10")
        if self.min_nodes < 1:
            raise PlanError("a federation needs at least one node")
        if self.secure_aggregation and self.min_nodes < 3:
            raise PlanError("SecAgg+ needs at least 3 nodes (secret shares among them)")
        if self.dp_clipping_norm < 0 or self.dp_noise_multiplier < 0:
            raise PlanError("clipping norm and noise multiplier are not negative")
        self.sampling()  # its own checks (size, stride, tissue fraction)

    def sampling(self) -> Sampling:
        try:
            return Sampling(size=self.patch_size, level=self.level, stride=self.stride or None,
                            random=self.random or None, seed=self.seed,
                            tissue=None if self.tissue < 0 else self.tissue)
        except ValueError as error:
            raise PlanError(str(error)) from error

    def run_config(self) -> RunConfig:
        """Flower's run config: flat, dashed keys; classes comma-joined."""
        config: RunConfig = {}
        for key, value in asdict(self).items():
            config[key.replace("_", "-")] = ",".join(value) if key == "classes" else value
        return config

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> TrainingPlan:
        values: dict[str, Any] = {}
        for field in fields(cls):
            key = field.name.replace("_", "-")
            if key in config:
                values[field.name] = config[key]
        values["classes"] = tuple(str(values.get("classes", "")).split(","))
        kinds = {f.name: f.type for f in fields(cls)}
        for name, value in list(values.items()):
            kind = str(kinds[name])
            if kind == "int":
                values[name] = int(value)
            elif kind == "float":
                values[name] = float(value)
            elif kind == "bool":
                values[name] = value if isinstance(value, bool) else str(value).lower() == "true"
        return cls(**values)
