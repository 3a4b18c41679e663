"""The part of OpenSlide's API that follows from the pyramid's geometry and `read_region` alone, for
every reader that speaks it (the stored-slide reader here, the SDK's remote slide): one mapping of
level-0 locations to level pixels, so that both give the same pixels for the same request."""

from __future__ import annotations

import math
from typing import Any

from PIL import Image


class OpenSlideVocabulary:
    """Mix into a class that has `dimensions`, `level_count`, `level_dimensions`, `level_downsamples`
    and an OpenSlide-style `read_region` giving RGBA images."""

    dimensions: tuple[int, int]
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int], *,
                    as_array: bool = False) -> Any:
        raise NotImplementedError

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise IndexError(f"level {level} out of range (the slide has {self.level_count})")

    def _level_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(x, y, width, height) of a `read_region` request in the level's own pixels."""
        self._check_level(level)
        width, height = region_size(size)
        if level == 0:
            return int(location[0]), int(location[1]), width, height
        downsample = self.level_downsamples[level]
        return level_coordinate(location[0], downsample), level_coordinate(location[1], downsample), width, height

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The level to read for a given downsample: as OpenSlide, the coarsest one not coarser."""
        if downsample < self.level_downsamples[0]:
            return 0
        for index in range(1, self.level_count):
            if downsample < self.level_downsamples[index]:
                return index - 1
        return self.level_count - 1

    def get_thumbnail(self, size: tuple[int, int]) -> Image.Image:
        """An RGB image of the whole slide within `size`, on white, as openslide-python makes it."""
        downsample = max(dimension / wanted for dimension, wanted in zip(self.dimensions, size, strict=True))
        level = self.get_best_level_for_downsample(downsample)
        tile = self.read_region((0, 0), level, self.level_dimensions[level])
        assert isinstance(tile, Image.Image)
        thumbnail = Image.new("RGB", tile.size, "#ffffff")
        thumbnail.paste(tile, None, tile)
        thumbnail.thumbnail(size, Image.Resampling.LANCZOS)
        return thumbnail


def level_coordinate(value: float, downsample: float) -> int:
    """The level pixel for a level-0 coordinate, as close to OpenSlide as whole pixels get.

    OpenSlide paints a level at `value / downsample` (interpolating between pixels when that is
    not whole), and left of or above the slide shifts by whole level pixels, rounded toward 0.
    The nearest pixel also inverts the usual `int(level_pixel * downsample)` exactly.
    """
    if value >= 0:
        return math.floor(value / downsample + 0.5)
    return -int(-value / downsample)


def region_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = int(size[0]), int(size[1])
    if width < 0 or height < 0:
        raise ValueError(f"negative size {size}")
    return width, height
