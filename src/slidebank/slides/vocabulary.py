"""The part of OpenSlide's API that follows from the pyramid's geometry and `read_region` alone, for
every reader that speaks it (the stored-slide reader here, the SDK's remote slide)."""

from __future__ import annotations

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
