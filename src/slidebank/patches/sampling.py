"""Where patches are cut from a slide: a grid or seeded random places, at a level or a pixel size,
kept where the slide's QC tissue mask says there is tissue.

Everything here is a pure function of the slide's geometry, its mask and the parameters, so the
same parameters and seed give the same patches on every machine and in every worker.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


class SamplingError(ValueError):
    """Parameters that cannot be applied to a slide (e.g. a pixel size asked of a slide without one)."""


@dataclass(frozen=True)
class Sampling:
    """How patches are drawn. `size`: pixels of a patch (square). Scale: `level` (a stored level) or
    `mpp` (µm per pixel; read from the closest finer level and resized). Places: a grid with
    `stride` (pixels at the patch's scale; default `size`), or `random` places per slide drawn with
    `seed`. `tissue`: the least fraction of a patch the QC tissue mask must cover (None: no mask)."""

    size: int = 224
    level: int | None = None
    mpp: float | None = None
    stride: int | None = None
    random: int | None = None
    seed: int = 0
    tissue: float | None = 0.5

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 4096:
            raise SamplingError("a patch is 8 to 4096 pixels wide")
        if self.level is not None and self.mpp is not None:
            raise SamplingError("give a level or a pixel size, not both")
        if self.mpp is not None and not (math.isfinite(self.mpp) and self.mpp > 0):
            raise SamplingError("the pixel size must be a positive number")
        if self.stride is not None and self.stride < 1:
            raise SamplingError("the stride is at least 1 pixel")
        if self.random is not None and self.random < 1:
            raise SamplingError("random sampling draws at least one patch per slide")
        if self.tissue is not None and not 0 <= self.tissue <= 1:
            raise SamplingError("the tissue fraction is between 0 and 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Patch:
    """One patch: `read` pixels of `level` from level-0 (x, y), resized to `size` when they differ."""

    slide_id: str
    x: int
    y: int
    level: int
    read: int  # pixels read at `level`
    size: int  # pixels delivered
    extent: float  # level-0 pixels the patch covers (width = height)

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in level-0 pixels."""
        return self.x, self.y, self.x + self.extent, self.y + self.extent


MAX_DRAWS_PER_PATCH = 50  # random places tried per patch asked for, before settling for fewer


@dataclass(frozen=True)
class SlideGeometry:
    slide_id: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None  # µm per level-0 pixel (x), None when unknown

    def best_level_for_downsample(self, downsample: float) -> int:
        best = 0
        for index, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * 1.0001:
                best = index
        return best


@dataclass(frozen=True)
class TissueMask:
    """A boolean mask over the slide: mask[row, column] covers `cell` level-0 pixels square-ish
    (`cell_x` wide, `cell_y` high), from the slide's corner."""

    mask: np.ndarray
    cell_x: float
    cell_y: float

    def fraction(self, box: tuple[float, float, float, float]) -> float:
        x0, y0, x1, y1 = box
        rows, columns = self.mask.shape
        c0, c1 = max(int(x0 / self.cell_x), 0), min(math.ceil(x1 / self.cell_x), columns)
        r0, r1 = max(int(y0 / self.cell_y), 0), min(math.ceil(y1 / self.cell_y), rows)
        if c0 >= c1 or r0 >= r1:
            return 0.0
        return float(self.mask[r0:r1, c0:c1].mean())


def scale(geometry: SlideGeometry, sampling: Sampling) -> tuple[int, int, float]:
    """(level, pixels read at that level, level-0 pixels a patch covers)."""
    if sampling.mpp is not None:
        if geometry.mpp is None:
            raise SamplingError(f"{geometry.slide_id} has no known pixel size: sample it by level")
        downsample = sampling.mpp / geometry.mpp
        level = geometry.best_level_for_downsample(downsample)
        read = max(1, round(sampling.size * downsample / geometry.level_downsamples[level]))
        return level, read, sampling.size * downsample
    level = sampling.level or 0
    if not 0 <= level < len(geometry.level_downsamples):
        raise SamplingError(f"{geometry.slide_id} has no level {level}")
    return level, sampling.size, sampling.size * geometry.level_downsamples[level]


def place_patches(geometry: SlideGeometry, sampling: Sampling, mask: TissueMask | None) -> list[Patch]:
    """The slide's patches, in reading order (grid) or drawing order (random, no place twice).
    Every patch lies wholly inside the level it is read from. Random sampling of a slide with
    little tissue may find fewer places than asked for (after MAX_DRAWS_PER_PATCH tries each)."""
    level, read, extent = scale(geometry, sampling)
    level_width, level_height = geometry.level_dimensions[level]
    downsample = geometry.level_downsamples[level]
    if read > level_width or read > level_height:
        return []
    max_x, max_y = (level_width - read) * downsample, (level_height - read) * downsample  # level-0 corners

    def keep(x: int, y: int) -> Patch | None:
        patch = Patch(geometry.slide_id, x, y, level, read, sampling.size, extent)
        if mask is not None and sampling.tissue is not None and mask.fraction(patch.box()) < sampling.tissue:
            return None
        return patch

    patches: list[Patch] = []
    if sampling.random is None:
        step = (sampling.stride or sampling.size) * extent / sampling.size
        for row in range(int(max_y // step) + 1):
            for column in range(int(max_x // step) + 1):
                if (patch := keep(round(column * step), round(row * step))) is not None:
                    patches.append(patch)
        return patches
    rng = np.random.default_rng(np.random.SeedSequence([sampling.seed, *geometry.slide_id.encode()]))
    seen: set[tuple[int, int]] = set()
    draws = 0
    while len(patches) < sampling.random and draws < sampling.random * MAX_DRAWS_PER_PATCH:
        batch = sampling.random * 4
        draws += batch
        for x, y in zip(rng.integers(0, int(max_x) + 1, batch), rng.integers(0, int(max_y) + 1, batch), strict=True):
            if (int(x), int(y)) in seen:
                continue
            seen.add((int(x), int(y)))
            if (patch := keep(int(x), int(y))) is not None:
                patches.append(patch)
                if len(patches) == sampling.random:
                    break
    return patches
