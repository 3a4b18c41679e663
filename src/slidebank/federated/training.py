"""Local training and evaluation of a plan's model on patches read through the SDK.

The same code trains a node's share of a federated round, a node alone, or pooled data: only
the datasets differ, which is what makes their held-out accuracies comparable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from slidebank.client import Client
from slidebank.federated.plan import TrainingPlan
from slidebank.patches import PatchDataset


@dataclass(frozen=True)
class Scores:
    """Mean cross-entropy and accuracy over `examples` patches (training: over the last epoch)."""

    loss: float
    accuracy: float
    examples: int

    def as_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "accuracy": self.accuracy, "examples": self.examples}


def plan_patches(client: Client, slides: Iterable[str | dict[str, Any]], plan: TrainingPlan) -> PatchDataset:
    """The plan's labelled patches of these slides (unlabelled patches left out)."""
    return PatchDataset(client, slides, plan.sampling(), classes=list(plan.classes), min_overlap=plan.min_overlap)


def _loader(data: Dataset, plan: TrainingPlan, *, shuffle: bool, epoch: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(plan.seed * 1_000_003 + epoch)
    return DataLoader(data, batch_size=plan.batch_size, shuffle=shuffle, generator=generator, num_workers=0)


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model((images.float() - 128.0) / 64.0)


def train(model: nn.Module, data: Dataset, plan: TrainingPlan, epochs: int | None = None) -> Scores:
    """Adam over `data` for `epochs` (default: the plan's local epochs); a fresh optimiser each call, as
    each federated round starts from the averaged model."""
    if len(data) == 0:  # type: ignore[arg-type]  # torch's Dataset declares no __len__; every one given here has it
        raise ValueError("no labelled patches to train on")
    torch.manual_seed(plan.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=plan.learning_rate)
    loss_function = nn.CrossEntropyLoss()
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for epoch in range(epochs or plan.local_epochs):
        total_loss, correct, seen = 0.0, 0, 0
        for images, targets in _loader(data, plan, shuffle=True, epoch=epoch):
            optimiser.zero_grad()
            logits = _logits(model, images)
            loss = loss_function(logits, targets)
            loss.backward()
            optimiser.step()
            total_loss += float(loss.detach()) * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
    return Scores(total_loss / seen, correct / seen, seen)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, plan: TrainingPlan) -> Scores:
    model.eval()
    loss_function = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    for images, targets in _loader(data, plan, shuffle=False):
        logits = _logits(model, images)
        total_loss += float(loss_function(logits, targets))
        correct += int((logits.argmax(1) == targets).sum())
        seen += len(targets)
    if seen == 0:
        raise ValueError("no labelled patches to evaluate on")
    return Scores(total_loss / seen, correct / seen, seen)


def pooled(datasets: Iterable[Dataset]) -> Dataset:
    """Several nodes' patches as one dataset: the pooled-training baseline a federation is held to."""
    return ConcatDataset(list(datasets))
