"""How algorithms see a stored slide: regions and tiles at a chosen resolution, decrypted on read.

Resolutions are the stored levels, read as stored (no resampling) through the one stored-slide
reader: an algorithm asks for a µm/px and gets the coarsest stored level at or finer than it, and
is told the µm/px it got. A slide whose pixel size is unknown is read as if it were NOMINAL_MPP
(a 40× scan) so levels are still chosen sensibly, and `pixel_size_known` tells algorithms not to
report anything in µm. Every read is counted, for the job's log and benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from slidebank.slides.reader import StoredSlide

NOMINAL_MPP = 0.25  # µm/px assumed, for choosing levels only, when a slide's pixel size is unknown


@dataclass(frozen=True)
class Tile:
    x: int  # level-0 pixel position of the tile's corner
    y: int
    width: int  # level-0 pixels covered
    height: int
    pixels: np.ndarray  # RGB at the read level


@dataclass(frozen=True)
class TileGrid:
    """The tiles of `size` pixels over one stored level, and where each lands on a per-tile raster."""

    level: int
    size: int
    columns: int
    rows: int
    downsample: int = 1  # of the level, relative to level 0

    @property
    def cell(self) -> int:
        """Level-0 pixels per tile (and per raster cell)."""
        return self.size * self.downsample

    @property
    def extent(self) -> tuple[float, float]:
        """Level-0 width and height the raster covers: whole tiles reach past the slide's edges."""
        return float(self.columns * self.cell), float(self.rows * self.cell)

    def raster(self) -> np.ndarray:
        """One NaN ("not measured") per tile, to fill with a score per tile read."""
        return np.full((self.rows, self.columns), np.nan, dtype=np.float32)

    def place(self, tile: Tile) -> tuple[int, int]:
        """The (row, column) of a tile of this grid."""
        return tile.y // self.cell, tile.x // self.cell


class SlideReader:
    def __init__(self, slide: StoredSlide, slide_id: str) -> None:
        self._slide = slide
        self.slide_id = slide_id
        self.width, self.height = slide.dimensions
        self.pixel_size_known = slide.mpp is not None
        self.mpp = float(slide.mpp[0]) if slide.mpp is not None else NOMINAL_MPP  # level 0, µm per pixel
        self._downsamples = [round(d) for d in slide.level_downsamples]
        self.tiles_read = 0
        self.pixels_read = 0

    def level_for(self, mpp: float) -> int:
        """The coarsest stored level whose µm/px is at most `mpp` (level 0 if `mpp` is finer)."""
        fine_enough = [level for level in range(len(self._downsamples)) if self.mpp_of(level) <= mpp * (1 + 1e-6)]
        return max(fine_enough, default=0)

    def mpp_of(self, level: int) -> float:
        return self.mpp * self._downsamples[level]

    def downsample_of(self, level: int) -> int:
        return self._downsamples[level]

    def level_size(self, level: int) -> tuple[int, int]:
        return self._slide.level_dimensions[level]

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB pixels of a region given in that level's pixel coordinates (clipped to the slide)."""
        level_width, level_height = self.level_size(level)
        width, height = min(width, level_width - x), min(height, level_height - y)
        if width <= 0 or height <= 0:
            raise ValueError(f"region ({x}, {y}) is outside level {level} of {self.slide_id}")
        pixels = self._slide.read_level_array(level, (x, y), (width, height))
        self.tiles_read += 1
        self.pixels_read += width * height
        return pixels

    def overview(self, mpp: float) -> tuple[np.ndarray, float]:
        """The whole slide at about `mpp` µm/px, and the µm/px it was read at."""
        level = self.level_for(mpp)
        width, height = self.level_size(level)
        return self.read(level, 0, 0, width, height), self.mpp_of(level)

    def grid(self, mpp: float, size: int) -> TileGrid:
        """The grid `tiles(mpp, size)` walks."""
        level = self.level_for(mpp)
        width, height = self.level_size(level)
        return TileGrid(level, size, math.ceil(width / size), math.ceil(height / size), self._downsamples[level])

    def tiles(self, mpp: float, size: int, mask: np.ndarray | None = None, min_fraction: float = 0.1) -> Iterator[Tile]:
        """Tiles of `size` pixels at about `mpp`, row by row; with a (coarse, whole-slide) boolean
        mask, only tiles whose footprint on the mask is at least `min_fraction` True."""
        grid = self.grid(mpp, size)
        scale = grid.downsample
        for row in range(grid.rows):
            for column in range(grid.columns):
                x, y = column * grid.cell, row * grid.cell
                if mask is not None and self.mask_fraction(mask, x, y, grid.cell, grid.cell) < min_fraction:
                    continue
                pixels = self.read(grid.level, column * size, row * size, size, size)
                yield Tile(x, y, pixels.shape[1] * scale, pixels.shape[0] * scale, pixels)

    def mask_fraction(self, mask: np.ndarray, x: int, y: int, width: int, height: int) -> float:
        """Fraction of True in the part of a whole-slide mask that covers a level-0 rectangle."""
        rows, columns = mask.shape
        x0, x1 = int(x * columns / self.width), math.ceil(min(x + width, self.width) * columns / self.width)
        y0, y1 = int(y * rows / self.height), math.ceil(min(y + height, self.height) * rows / self.height)
        window = mask[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
        return float(window.mean()) if window.size else 0.0
