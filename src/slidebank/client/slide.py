"""A stored slide on a node, read like a local file: OpenSlide's vocabulary over HTTP.

`read_region` gives exactly the stored pixels: it fetches the stored frames a region spans (in
batches, over a connection pool, several batches at once), decodes them here as the node's own
reader does (`slides.frames.FrameDecoder`), keeps them in the client's frame cache, and copies the
region out. Nothing is re-encoded on the way, so what a model trains on is what the scanner wrote.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
from PIL import Image

from slidebank.client.cache import FrameCache
from slidebank.client.errors import ServerError
from slidebank.client.transport import Transport, multipart_parts
from slidebank.slides.frames import FrameDecoder, FrameEncoding
from slidebank.slides.vocabulary import OpenSlideVocabulary

FRAMES_PER_BATCH = 16  # a region larger than this is fetched in several batches at once
MAX_TILE_SIDE = 8192  # larger stored tiles than this are a malformed description, not a slide
Progress = Callable[[int, int], None]  # (frames done, frames in all)
Region = tuple[int, int, int, int]  # left, top, right, bottom in a level's pixels


class RemoteSlide(OpenSlideVocabulary):
    """A slide of a node, with openslide-python's API (`dimensions`, `level_count`,
    `level_dimensions`, `level_downsamples`, `properties`, `read_region`, `get_thumbnail`,
    `get_best_level_for_downsample`); `associated_images` is empty by design: labels and macros
    may show names and are not stored.

    Made by `Client.open`; thread-safe, so one slide can feed every thread of a data loader.
    """

    def __init__(self, transport: Transport, description: dict[str, Any], cache: FrameCache, executor: Executor,
                 progress: Callable[[int], Progress | None] | None = None) -> None:
        self.slide_id: str = description["slide_id"]
        self._transport = transport
        self._cache = cache
        self._executor = executor
        self._progress = progress
        levels = description["levels"]
        self.level_count = len(levels)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple((lv["width"], lv["height"]) for lv in levels)
        self.dimensions = self.level_dimensions[0]
        self.level_downsamples: tuple[float, ...] = tuple(float(lv["downsample"]) for lv in levels)
        self.level_tile_dimensions: tuple[tuple[int, int], ...] = tuple(
            (lv["tile_width"], lv["tile_height"]) for lv in levels)
        self._grids = [(lv["columns"], lv["rows"]) for lv in levels]
        self._encodings = [FrameEncoding(lv["transfer_syntax"], lv["photometric"], lv["samples_per_pixel"],
                                         lv["bits_stored"], lv["tile_width"], lv["tile_height"]) for lv in levels]
        self._decoders: dict[int, FrameDecoder] = {}
        mpp = description.get("mpp")
        self.mpp: tuple[float, float] | None = (float(mpp[0]), float(mpp[1])) if mpp else None
        self.properties: dict[str, str] = dict(description["properties"])
        self._max_frames = max(1, int(description.get("max_frames_per_request", FRAMES_PER_BATCH)))
        for width, height in self.level_tile_dimensions:
            if not (0 < width <= MAX_TILE_SIDE and 0 < height <= MAX_TILE_SIDE):
                raise ServerError(f"{self.slide_id}: the node describes {width}x{height} tiles, which no reader takes")
        self.associated_images: dict[str, Image.Image] = {}

    def __repr__(self) -> str:
        return f"RemoteSlide({self.slide_id!r} at {self._transport.url})"

    def __enter__(self) -> RemoteSlide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (the client owns the connections); for `with` and OpenSlide habits."""

    # -- OpenSlide API ---------------------------------------------------------------------

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int], *,
                    as_array: bool = False) -> Image.Image | np.ndarray:
        """An RGBA image of `size` at `level`, its corner at level-0 `location`, as OpenSlide
        (transparent outside the slide). With `as_array=True`: `read_region_array`'s RGB array."""
        if as_array:
            return self.read_region_array(location, level, size)
        rgb = self._read(location, level, size)
        image = Image.fromarray(rgb, "RGB").convert("RGBA")
        inside = self._inside(location, level, size)
        if inside is not None:  # partly outside the slide: transparent there
            alpha = np.zeros(rgb.shape[:2], np.uint8)
            alpha[inside] = 255
            image.putalpha(Image.fromarray(alpha, "L"))
        return image

    def read_region_array(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """`read_region` as an (height, width, 3) uint8 RGB array (black outside the slide)."""
        return self._read(location, level, size)

    # -- stored frames ----------------------------------------------------------------------

    def read_frames(self, level: int, tiles: Iterable[tuple[int, int]] | dict[tuple[int, int], int]
                    ) -> dict[tuple[int, int], np.ndarray]:
        """Decoded stored frames (RGB) of a level, from the cache or the node: whole frames, or, when
        `tiles` maps each tile to a row count, at least that many top rows of each."""
        self._check_level(level)
        columns, rows = self._grids[level]
        tile_height = self.level_tile_dimensions[level][1]
        wanted = tiles if isinstance(tiles, dict) else dict.fromkeys(tiles, tile_height)
        found: dict[tuple[int, int], np.ndarray] = {}
        missing = []
        for (column, row), needed in wanted.items():
            if not (0 <= column < columns and 0 <= row < rows):
                raise IndexError(f"tile ({column}, {row}) is outside the {columns}x{rows} tiles of level {level}")
            key = (self.slide_id, level, column, row)
            frame = self._cache.decoded(key, needed)
            if frame is None and (encoded := self._cache.encoded(key)) is not None:
                frame = self._decoder(level).decode(encoded, needed)
                self._cache.put(key, None, frame)
            if frame is None:
                missing.append((column, row))
            else:
                found[(column, row)] = frame
        if missing:
            found.update(self._fetch(level, {tile: wanted[tile] for tile in missing}))
        return found

    def _fetch(self, level: int, missing: dict[tuple[int, int], int]) -> dict[tuple[int, int], np.ndarray]:
        tiles = list(missing)
        batches = max(1, math.ceil(len(tiles) / min(FRAMES_PER_BATCH, self._max_frames)))
        size = min(self._max_frames, math.ceil(len(tiles) / batches))
        chunks = [{tile: missing[tile] for tile in tiles[start:start + size]} for start in range(0, len(tiles), size)]
        if len(chunks) == 1:
            return self._fetch_batch(level, chunks[0])
        report = self._progress(len(tiles)) if self._progress else None
        fetched: dict[tuple[int, int], np.ndarray] = {}
        for result in self._executor.map(lambda chunk: self._fetch_batch(level, chunk), chunks):
            fetched.update(result)
            if report:
                report(len(fetched), len(tiles))
        return fetched

    def _fetch_batch(self, level: int, tiles: dict[tuple[int, int], int]) -> dict[tuple[int, int], np.ndarray]:
        answer = self._transport.request("GET", f"/api/slides/{self.slide_id}/frames", params={
            "level": level, "tiles": ",".join(f"{column}_{row}" for column, row in tiles)})
        parts = multipart_parts(answer)
        if len(parts) != len(tiles):
            raise ServerError(f"asked for {len(tiles)} frames, got {len(parts)}")
        decoder = self._decoder(level)
        frames = {}
        for (tile, rows), data in zip(tiles.items(), parts, strict=True):
            frame = decoder.decode(data, rows)
            self._cache.put((self.slide_id, level, *tile), data, frame)
            frames[tile] = frame
        return frames

    def _decoder(self, level: int) -> FrameDecoder:
        decoder = self._decoders.get(level)
        if decoder is None:
            decoder = self._decoders[level] = FrameDecoder(self._encodings[level])
        return decoder

    # -- regions -------------------------------------------------------------------------------

    def _clip(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> tuple[Region, Region]:
        """The region in the level's pixels, and the part of it inside the level (empty: nothing
        inside), each as (left, top, right, bottom)."""
        x, y, width, height = self._level_region(location, level, size)
        level_width, level_height = self.level_dimensions[level]
        left, top = max(x, 0), max(y, 0)
        return (x, y, x + width, y + height), (left, top, max(min(x + width, level_width), left),
                                                max(min(y + height, level_height), top))

    def _inside(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> tuple[slice, slice] | None:
        """The part of a region inside the slide, in the region's pixels; None when all of it is."""
        (x, y, right, bottom), inner = self._clip(location, level, size)
        if inner == (x, y, right, bottom):
            return None
        return slice(inner[1] - y, inner[3] - y), slice(inner[0] - x, inner[2] - x)

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """The region's RGB pixels, black outside the slide."""
        return self.read_regions_array([(location, level, size)])[0]

    def read_regions_array(self, regions: Sequence[tuple[tuple[int, int], int, tuple[int, int]]]) -> list[np.ndarray]:
        """Many `(location, level, size)` regions at once, each as `read_region_array` gives it. The
        frames they span are fetched together (a batch of training patches costs a request or two,
        not one per patch) and each is decoded once, down to the last row any region needs."""
        plans = []
        wanted: dict[int, dict[tuple[int, int], int]] = {}
        for location, level, size in regions:
            outer, (left, top, right, bottom) = self._clip(location, level, size)
            x, y = outer[0], outer[1]
            tile_width, tile_height = self.level_tile_dimensions[level]
            shape = (outer[3] - y, outer[2] - x, 3)
            out = (np.empty if outer == (left, top, right, bottom) else np.zeros)(shape, np.uint8)
            plans.append((out, level, x, y, left, top, right, bottom))
            if left >= right or top >= bottom:
                continue
            tiles = wanted.setdefault(level, {})
            for row in range(top // tile_height, (bottom - 1) // tile_height + 1):
                rows = min(bottom - row * tile_height, tile_height)  # the rows the region needs
                for column in range(left // tile_width, (right - 1) // tile_width + 1):
                    tiles[(column, row)] = max(tiles.get((column, row), 0), rows)
        frames = {level: self.read_frames(level, tiles) for level, tiles in wanted.items()}
        for out, level, x, y, left, top, right, bottom in plans:
            if left >= right or top >= bottom:
                continue
            tile_width, tile_height = self.level_tile_dimensions[level]
            for row in range(top // tile_height, (bottom - 1) // tile_height + 1):
                for column in range(left // tile_width, (right - 1) // tile_width + 1):
                    frame = frames[level][(column, row)]
                    frame_left, frame_top = column * tile_width, row * tile_height
                    x0, x1 = max(left, frame_left), min(right, frame_left + tile_width)
                    y0, y1 = max(top, frame_top), min(bottom, frame_top + tile_height)
                    out[y0 - y:y1 - y, x0 - x:x1 - x] = frame[y0 - frame_top:y1 - frame_top,
                                                              x0 - frame_left:x1 - frame_left]
        return [plan[0] for plan in plans]
