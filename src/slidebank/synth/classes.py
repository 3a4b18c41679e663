"""Slides whose tissue classes are known: blocks of tumour, stroma and fat textures, and the
GeoJSON that annotates them.

Why: training needs ground truth. A patch classifier trained on these slides (and a federation of
nodes holding different classes of them) can be scored on held-out slides against labels that
are right by construction, without a pathologist or a downloaded dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidebank.synth.modalities import write_aperio_jpeg_svs

TISSUE_CLASSES = ("Tumor", "Stroma", "Fat")
BLOCK = 256  # pixels of one class block at level 0


@dataclass(frozen=True)
class ClassSlide:
    """A written slide and its annotations (GeoJSON features, one polygon per block)."""

    path: Path
    features: list[dict[str, Any]]

    def geojson(self) -> dict[str, Any]:
        return {"type": "FeatureCollection", "features": self.features}


def _tumor(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Crowded dark purple nuclei on pale pink."""
    image = np.empty((*y.shape, 3), np.float32)
    image[:] = (225, 175, 210)
    for _ in range(90):
        cy, cx, radius = rng.uniform(0, y.shape[0]), rng.uniform(0, y.shape[1]), rng.uniform(4, 9)
        inside = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
        image[inside] = (95, 50, 140)
    return image


def _stroma(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Wavy pink collagen fibres."""
    angle, period, phase = rng.uniform(0, np.pi), rng.uniform(9, 14), rng.uniform(0, 2 * np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    across = -x * np.sin(angle) + y * np.cos(angle)
    wave = np.sin(2 * np.pi * (across + 4 * np.sin(along / 17)) / period + phase)
    light, dark = np.array((245, 185, 205), np.float32), np.array((205, 95, 140), np.float32)
    t = ((wave + 1) / 2)[..., None]
    return light * t + dark * (1 - t)


def _fat(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Large empty adipocytes: white, with thin pink membranes between them (Voronoi edges)."""
    centres = rng.uniform(0, y.shape[0], size=(20, 2))
    distances = np.sort(np.stack([np.hypot(y - cy, x - cx) for cy, cx in centres]), axis=0)
    membrane = (distances[1] - distances[0]) < 2.5
    image = np.empty((*y.shape, 3), np.float32)
    image[:] = (246, 242, 246)
    image[membrane] = (215, 140, 180)
    return image


TEXTURES = {"Tumor": _tumor, "Stroma": _stroma, "Fat": _fat}


def paint_class_blocks(layout: Sequence[Sequence[str]], seed: int) -> np.ndarray:
    """RGB pixels of a grid of class blocks (`layout` rows of class names), with a per-slide stain
    tint and fine noise so that no two slides look the same."""
    rng = np.random.default_rng(seed)
    rows, columns = len(layout), len(layout[0])
    image = np.empty((rows * BLOCK, columns * BLOCK, 3), np.float32)
    y, x = np.mgrid[0:BLOCK, 0:BLOCK].astype(np.float32)
    tint = rng.uniform(-12, 12, size=3)
    for row, names in enumerate(layout):
        for column, name in enumerate(names):
            block = TEXTURES[name](rng, y, x)
            image[row * BLOCK:(row + 1) * BLOCK, column * BLOCK:(column + 1) * BLOCK] = block
    image += tint + rng.normal(0, 6, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_class_slide(path: Path, layout: Sequence[Sequence[str]], *, seed: int = 0, mpp: float = 0.5) -> ClassSlide:
    """An Aperio SVS of class blocks and one annotation polygon per block (QuPath's classification)."""
    if not layout or any(len(row) != len(layout[0]) for row in layout):
        raise ValueError("the layout is a non-empty grid of class names")
    unknown = {name for row in layout for name in row} - set(TEXTURES)
    if unknown:
        raise ValueError(f"unknown classes {sorted(unknown)}: use {', '.join(TISSUE_CLASSES)}")
    written = write_aperio_jpeg_svs(Path(path), pixels=paint_class_blocks(layout, seed), tile=BLOCK, levels=3, mpp=mpp)
    features = []
    for row, names in enumerate(layout):
        for column, name in enumerate(names):
            x0, y0 = column * BLOCK, row * BLOCK
            ring = [[x0, y0], [x0 + BLOCK, y0], [x0 + BLOCK, y0 + BLOCK], [x0, y0 + BLOCK], [x0, y0]]
            features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                             "properties": {"classification": {"name": name}}})
    return ClassSlide(written, features)
