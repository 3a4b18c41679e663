"""The models a federation can train, built in code (no weights are downloaded, ever).

A model is named in the training plan; every node and the coordinator build it from that name and
the number of classes, so only its parameters (numpy arrays, in `state_dict` order) travel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def small_cnn(classes: int) -> nn.Module:
    """Three strided convolutions and a linear head (~15k parameters): trains on 2 CPU cores in seconds."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes),
    )


def colour_logistic(classes: int) -> nn.Module:
    """Logistic regression on a patch's mean colour: a baseline that learns stain, not structure."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, classes))


MODELS: dict[str, Callable[[int], nn.Module]] = {"small-cnn": small_cnn, "colour-logistic": colour_logistic}


def build_model(name: str, classes: int, seed: int = 0) -> nn.Module:
    """The named model with its initial weights drawn from `seed` (the same on every node)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}")
    if classes < 2:
        raise ValueError("a classifier needs at least two classes")
    torch.manual_seed(seed)
    return MODELS[name](classes)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [tensor.detach().cpu().numpy().copy() for tensor in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays in `state_dict` order; a wrong count or shape is refused (never silently broadcast)."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"the model has {len(state)} parameter arrays, not {len(weights)}")
    for (name, current), array in zip(state.items(), weights, strict=True):
        if tuple(current.shape) != tuple(array.shape):
            raise ValueError(f"{name}: shape {tuple(array.shape)} where the model has {tuple(current.shape)}")
    model.load_state_dict({name: torch.from_numpy(np.asarray(array)) for name, array in zip(state, weights, strict=True)})
