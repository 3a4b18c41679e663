"""One stored slide seen as an image pyramid: geometry, stored tiles, rendered regions.

Both tile protocols (Deep Zoom, IIIF) are views of this. The stored DICOM levels are exact
power-of-two reductions with ceil-rounded sizes, which is also how Deep Zoom and IIIF clients
compute level sizes: a client asking for a tile of a stored level gets the stored compressed bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from PIL import Image
from wsidicom import WsiDicom

from slidebank.storage.blobstore import BlobFile
from slidebank.tiles.frames import LevelFrames, level_frames

# Frames in these transfer syntaxes are complete baseline JPEG files that browsers decode as is.
JPEG_BASELINE_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50"})


@dataclass(frozen=True)
class StoredLevel:
    index: int  # position in the stored pyramid, as wsidicom numbers it
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
    """A stored slide opened for reading; safe to share between threads (wsidicom locks its reads)."""

    @classmethod
    def open(cls, blobs: list[BlobFile], identity: PyramidIdentity) -> SlidePyramid:
        """Open from the stored (encrypted) files; the pyramid owns and closes them."""
        return cls(WsiDicom.open_streams([blob.stream() for blob in blobs]), identity, blobs)

    def __init__(self, wsi: WsiDicom, identity: PyramidIdentity, blobs: list[BlobFile]) -> None:
        self._wsi = wsi
        self.identity = identity
        self.width = wsi.size.width
        self.height = wsi.size.height
        self.tile_size = wsi.tile_size.width
        self.levels = tuple(self._power_of_two_levels(wsi))
        self.stored_jpeg = identity.transfer_syntax in JPEG_BASELINE_SYNTAXES
        self.etag_base = identity.source_sha256[:20]
        ingested = identity.ingested_at
        self.last_modified = format_datetime(ingested, usegmt=True) if ingested else None  # an HTTP date
        # Interior stored tiles are read straight from the file (one positioned read, decrypting
        # only the segments it spans); edge tiles need cropping and go through wsidicom.
        self._blobs = blobs
        self._frames: dict[int, tuple[BlobFile, LevelFrames]] = {}
        widths = {level.width: level.index for level in self.levels if self.stored_jpeg}
        for blob in blobs:
            table = level_frames(blob)
            if table is not None and table.width in widths and widths[table.width] not in self._frames:
                self._frames[widths[table.width]] = (blob, table)

    def _power_of_two_levels(self, wsi: WsiDicom) -> list[StoredLevel]:
        """Stored levels whose size is exactly ceil(size / 2^k); others cannot be served by copy."""
        levels = []
        for index, level in enumerate(wsi.levels):
            downsample = 2 ** round(math.log2(self.width / level.size.width))
            expected = (math.ceil(self.width / downsample), math.ceil(self.height / downsample))
            if (level.size.width, level.size.height) == expected and level.tile_size.width == self.tile_size:
                levels.append(StoredLevel(index, level.size.width, level.size.height, downsample))
        return levels

    def level_for_downsample(self, downsample: float) -> StoredLevel:
        """The coarsest stored level that still has at least the detail asked for."""
        candidates = [level for level in self.levels if level.downsample <= downsample * 1.0001]
        return max(candidates, key=lambda level: level.downsample) if candidates else self.levels[0]

    def stored_level(self, downsample: int) -> StoredLevel | None:
        return next((level for level in self.levels if level.downsample == downsample), None)

    def encoded_tile(self, level: StoredLevel, col: int, row: int) -> bytes:
        """The stored compressed frame, losslessly cropped at the right and bottom edges."""
        direct = self._frames.get(level.index)
        interior = (col + 1) * self.tile_size <= level.width and (row + 1) * self.tile_size <= level.height
        if direct is not None and interior:
            blob, table = direct
            return table.read(blob, col, row)
        return self._wsi.read_encoded_tile(level.index, (col, row))

    def decoded_tile(self, level: StoredLevel, col: int, row: int) -> Image.Image:
        x, y = col * self.tile_size, row * self.tile_size
        width = min(self.tile_size, level.width - x)
        height = min(self.tile_size, level.height - y)
        return self._wsi.read_region((x, y), level.index, (width, height)).convert("RGB")

    def render(self, region: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
        """Level-0 `region` (x, y, w, h) scaled to `size`, read from the nearest finer stored level.

        Only the pixels of that level that cover the region are read, so a thumbnail of a
        gigapixel slide costs a few tiles of its smallest level, not the slide.
        """
        x, y, width, height = region
        scale = min(width / size[0], height / size[1])
        level = self.level_for_downsample(scale)
        d = level.downsample
        left, top = x // d, y // d
        right = min(level.width, math.ceil((x + width) / d))
        bottom = min(level.height, math.ceil((y + height) / d))
        image = self._wsi.read_region((left, top), level.index, (right - left, bottom - top)).convert("RGB")
        box = (x / d - left, y / d - top, (x + width) / d - left, (y + height) / d - top)
        if image.size == size and box == (0, 0, *size):
            return image
        resample = Image.Resampling.BICUBIC if scale < d else Image.Resampling.BOX
        return image.resize(size, resample, box=box)

    def close(self) -> None:
        self._frames.clear()
        self._wsi.close()
        for blob in self._blobs:
            blob.close()
