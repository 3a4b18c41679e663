"""One stored slide seen as an image pyramid: geometry, stored tiles, rendered regions.

Both tile protocols (Deep Zoom, IIIF) are views of this, over the one stored-slide reader
(`slides.reader.StoredSlide`). The stored DICOM levels are exact power-of-two reductions with
ceil-rounded sizes, which is also how Deep Zoom and IIIF clients compute level sizes: a client
asking for a tile of a stored level gets the stored compressed bytes.

Rendering is bounded before it starts: a region is read from the pyramid level that serves the
requested scale, and never more than MAX_READ_PIXELS source pixels are decoded for one answer,
whatever the request's aspect ratio (a full slide squeezed to one pixel high reads a small level,
not the base); what cannot be served within that is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from PIL import Image

from slidebank.slides.reader import StoredSlide

MAX_READ_PIXELS = 4096 * 4096  # source pixels one rendered answer may decode (~50 MB of RGB)


class RenderTooLarge(ValueError):
    """A render that would decode more than MAX_READ_PIXELS from every level that could serve it."""


@dataclass(frozen=True)
class StoredLevel:
    index: int  # position in the stored pyramid (the reader's level)
    width: int
    height: int
    downsample: int  # power of two, relative to level 0

    def tile_grid(self, tile_size: int) -> tuple[int, int]:
        return math.ceil(self.width / tile_size), math.ceil(self.height / tile_size)


@dataclass(frozen=True)
class PyramidIdentity:
    """What makes cached responses of a slide valid: the slide never changes once stored."""

    slide_id: str
    source_sha256: str
    ingested_at: datetime | None
    transfer_syntax: str


class SlidePyramid:
    """A stored slide opened for reading; safe to share between threads (the reader is)."""

    def __init__(self, slide: StoredSlide, identity: PyramidIdentity) -> None:
        self.slide = slide
        self.identity = identity
        self.width, self.height = slide.dimensions
        self.tile_size = slide.level_tile_dimensions[0][0]
        self.levels = tuple(self._power_of_two_levels())
        self.stored_jpeg = slide.stored_jpeg
        self.etag_base = identity.source_sha256[:20]
        ingested = identity.ingested_at
        self.last_modified = format_datetime(ingested, usegmt=True) if ingested else None  # an HTTP date

    def _power_of_two_levels(self) -> list[StoredLevel]:
        """Stored levels whose size is exactly ceil(size / 2^k); others cannot be served by copy."""
        levels = []
        for index, (width, height) in enumerate(self.slide.level_dimensions):
            downsample = 2 ** round(math.log2(self.width / width))
            expected = (math.ceil(self.width / downsample), math.ceil(self.height / downsample))
            if (width, height) == expected and self.slide.level_tile_dimensions[index][0] == self.tile_size:
                levels.append(StoredLevel(index, width, height, downsample))
        return levels

    def level_for_downsample(self, downsample: float) -> StoredLevel:
        """The coarsest stored level that still has at least the detail asked for."""
        candidates = [level for level in self.levels if level.downsample <= downsample * 1.0001]
        return max(candidates, key=lambda level: level.downsample) if candidates else self.levels[0]

    def stored_level(self, downsample: int) -> StoredLevel | None:
        return next((level for level in self.levels if level.downsample == downsample), None)

    def encoded_tile(self, level: StoredLevel, col: int, row: int) -> bytes:
        """The stored compressed frame, losslessly cropped at the right and bottom edges."""
        return self.slide.read_encoded_tile(level.index, col, row)

    def decoded_tile(self, level: StoredLevel, col: int, row: int) -> Image.Image:
        return Image.fromarray(self.slide.read_tile(level.index, col, row))

    def render_level(self, region: tuple[int, int, int, int], size: tuple[int, int]) -> StoredLevel:
        """The level `render` reads for this request: the one serving its scale, or a coarser one
        when that would decode more than MAX_READ_PIXELS; RenderTooLarge if none is small enough."""
        _, _, width, height = region
        scale = min(width / size[0], height / size[1])
        level = self.level_for_downsample(scale)
        coarser = sorted((lv for lv in self.levels if lv.downsample >= level.downsample), key=lambda lv: lv.downsample)
        for candidate in coarser:
            if math.ceil(width / candidate.downsample) * math.ceil(height / candidate.downsample) <= MAX_READ_PIXELS:
                return candidate
        raise RenderTooLarge(f"a {width}×{height} region cannot be rendered at {size[0]}×{size[1]} from this "
                             "pyramid within the server's limits")

    def render(self, region: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
        """Level-0 `region` (x, y, w, h) scaled to `size`, read from the level `render_level` picks.

        Only the pixels of that level that cover the region are read, so a thumbnail of a
        gigapixel slide costs a few tiles of its smallest level, not the slide.
        """
        x, y, width, height = region
        scale = min(width / size[0], height / size[1])
        level = self.render_level(region, size)
        d = level.downsample
        left, top = x // d, y // d
        right = min(level.width, math.ceil((x + width) / d))
        bottom = min(level.height, math.ceil((y + height) / d))
        pixels = self.slide.read_level_array(level.index, (left, top), (right - left, bottom - top))
        image = Image.fromarray(pixels)
        box = (x / d - left, y / d - top, (x + width) / d - left, (y + height) / d - top)
        if image.size == size and box == (0, 0, *size):
            return image
        resample = Image.Resampling.BICUBIC if scale < d else Image.Resampling.BOX
        return image.resize(size, resample, box=box)

    def close(self, *, forget: bool = False) -> None:
        self.slide.close(forget=forget)
