"""Pyramid geometry and tile streaming: which levels a slide has, and each level's encoded tiles.

Tiles are painted and JPEG-encoded on a thread pool with a bounded window in flight and handed to
the TIFF writer in order, so memory stays bounded (one tile per worker plus the writer's offset
tables) whatever the slide's size.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import imagecodecs
import numpy as np

from slidebank.synth.tissue import Painter, defocus

THUMBNAIL_MAX = 1024
# Stored JPEG tiles are YCbCr 4:2:0, as tifffile writes RGB data with compression='jpeg' by default.
JPEG_SUBSAMPLING = (2, 2)


def level_dimensions(width: int, height: int, tile_size: int) -> tuple[tuple[int, int], ...]:
    """Power-of-two levels (ceil sizes) down to the first whose longer side fits in one tile."""
    dims = [(width, height)]
    while max(dims[-1]) > tile_size:
        k = len(dims)
        dims.append((-(-width // (1 << k)), -(-height // (1 << k))))
    return tuple(dims)


def thumbnail_size(width: int, height: int) -> tuple[int, int]:
    """Thumbnail page size: the slide shrunk (never enlarged) to at most THUMBNAIL_MAX a side."""
    scale = min(1.0, THUMBNAIL_MAX / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_tile(tile: np.ndarray, quality: int) -> bytes:
    """Encode one tile exactly as tifffile would for compression='jpeg', photometric='rgb'."""
    return bytes(
        imagecodecs.jpeg8_encode(
            tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=JPEG_SUBSAMPLING
        )
    )


_ALLOCATOR_LOCK = threading.Lock()
_ALLOCATOR_TUNED = False


def tune_allocator() -> None:
    """Stop glibc from returning and re-faulting the ~5 MB of per-tile temporaries every tile.

    With the default dynamic thresholds glibc trims freed heap tops and mmaps 256 KiB+ arrays, so
    each tile re-faults its scratch memory: ~40% of the run time went to page faults.  Raising the
    thresholds (process-wide, once, glibc only) keeps that scratch memory mapped; the heap still
    only holds what the worker threads use at their peak (tens of MB).
    """
    global _ALLOCATOR_TUNED
    with _ALLOCATOR_LOCK:
        if _ALLOCATOR_TUNED:
            return
        _ALLOCATOR_TUNED = True
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # noqa: B018 - only glibc has mallopt with these knobs
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        m_trim_threshold, m_mmap_threshold = -1, -3
        mallopt(m_mmap_threshold, 4 << 20)
        mallopt(m_trim_threshold, 32 << 20)


def worker_count() -> int:
    """Threads for rendering/encoding: the CPUs this process may run on (at most 8)."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    return max(1, min(8, available))


def _ordered_parallel(tasks: Iterator[Callable[[], bytes]], workers: int) -> Iterator[bytes]:
    """Run tasks on a thread pool keeping a bounded window in flight; yield results in order."""
    if workers <= 1:
        for task in tasks:
            yield task()
        return
    window: deque[Future[bytes]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slidebank-synth") as pool:
        for task in tasks:
            window.append(pool.submit(task))
            if len(window) >= 3 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def level_tiles(painter: Painter, level: int, dims: tuple[int, int], tile_size: int, quality: int,
                workers: int, blurred: Sequence[tuple[int, int, int, int]] = ()) -> Iterator[bytes]:
    """Encoded tiles of one level in TIFF order (row-major); `blurred` level-0 rectangles out of focus."""
    w, h = dims
    downsample = float(1 << level)

    def tasks() -> Iterator[Callable[[], bytes]]:
        for ty in range(-(-h // tile_size)):
            for tx in range(-(-w // tile_size)):
                def task(tx: int = tx, ty: int = ty) -> bytes:
                    tile = painter.render(tx * tile_size, ty * tile_size, tile_size, tile_size, downsample, level)
                    if blurred:
                        tile = defocus(tile, tx * tile_size, ty * tile_size, downsample, blurred)
                    return encode_tile(tile, quality)

                yield task

    return _ordered_parallel(tasks(), workers)


def render_overview(painter: Painter, width: int, height: int, cols: int, rows: int) -> np.ndarray:
    """A whole small overview image (thumbnail/macro source), rendered in bounded strips."""
    downsample = max(width / cols, height / rows)
    out = np.empty((rows, cols, 3), dtype=np.uint8)
    for r0 in range(0, rows, 128):
        r1 = min(rows, r0 + 128)
        out[r0:r1] = painter.render(0, r0, cols, r1 - r0, downsample, 4099)
    return out
