"""The tile service the HTTP layer calls: open pyramids kept warm, rendered tiles cached.

Opening a stored slide parses its DICOM headers and frame tables (milliseconds); a pathologist
panning asks for dozens of tiles a second, so open pyramids are kept in an LRU per process.
Rendered (not stored) tiles are cached by bytes; stored tiles are not, the OS page cache is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from cachetools import LRUCache
from wsidicom.config import settings as wsidicom_settings

from slidebank.access.errors import SlideNotFound
from slidebank.catalog import Catalog
from slidebank.slides.stored import OpenBlob, open_stored_slide
from slidebank.tiles.deepzoom import DeepZoomTile, TileNotFound, deepzoom_tile
from slidebank.tiles.iiif import IIIFImage, iiif_image
from slidebank.tiles.pyramid import PyramidIdentity, SlidePyramid

T = TypeVar("T", DeepZoomTile, IIIFImage)

OPEN_SLIDES = 32
RENDERED_CACHE_BYTES = 128 * 1024 * 1024
# wsidicom keeps frame caches per open slide (100 MB + 100 MB by default): with dozens of slides
# open per worker that is gigabytes. The OS page cache already holds the stored files.
FRAME_CACHE_BYTES_PER_SLIDE = {"encoded": 8 * 1024 * 1024, "decoded": 16 * 1024 * 1024}


class TileService:
    def __init__(self, catalog: Catalog, open_blob: OpenBlob, open_slides: int = OPEN_SLIDES,
                 cache_bytes: int = RENDERED_CACHE_BYTES) -> None:
        wsidicom_settings.encoded_frame_cache_size = FRAME_CACHE_BYTES_PER_SLIDE["encoded"]
        wsidicom_settings.decoded_frame_cache_size = FRAME_CACHE_BYTES_PER_SLIDE["decoded"]
        self._catalog = catalog
        self._open_blob = open_blob
        self._lock = threading.Lock()
        self._pyramids: LRUCache[str, SlidePyramid] = LRUCache(open_slides)
        self._rendered: LRUCache[tuple, DeepZoomTile | IIIFImage] = LRUCache(
            cache_bytes, getsizeof=lambda item: len(item.content)
        )

    def open_pyramid(self, slide_id: str) -> SlidePyramid | None:
        """The pyramid if it is already open in this process, without touching the catalog."""
        with self._lock:
            return self._pyramids.get(slide_id)

    def pyramid(self, slide_id: str) -> SlidePyramid:
        with self._lock:
            pyramid = self._pyramids.get(slide_id)
        if pyramid is not None:
            return pyramid
        detail = self._catalog.get_slide(slide_id)
        if detail is None:
            raise SlideNotFound("no such slide")
        identity = PyramidIdentity(
            slide_id=slide_id,
            source_sha256=detail["source_sha256"],
            ingested_at=datetime.fromisoformat(detail["ingested_at"]) if detail.get("ingested_at") else None,
            transfer_syntax=detail["transfer_syntax"],
        )
        pyramid = SlidePyramid(open_stored_slide(self._catalog, self._open_blob, slide_id), identity)
        with self._lock:
            existing = self._pyramids.get(slide_id)
            if existing is not None:  # another thread won the race
                pyramid.close()
                return existing
            self._pyramids[slide_id] = pyramid  # an evicted pyramid closes when its last reader drops it
        return pyramid

    def deepzoom_tile(self, slide_id: str, level: int, col: int, row: int, extension: str) -> DeepZoomTile:
        pyramid = self.pyramid(slide_id)
        return self._cached(("dz", slide_id, level, col, row, extension),
                            lambda: deepzoom_tile(pyramid, level, col, row, extension))

    def iiif_image(self, slide_id: str, region: str, size: str, rotation: str, quality_format: str) -> IIIFImage:
        pyramid = self.pyramid(slide_id)
        return self._cached(("iiif", slide_id, region, size, rotation, quality_format),
                            lambda: iiif_image(pyramid, region, size, rotation, quality_format))

    def evict(self, slide_id: str) -> None:
        """Forget an erased slide: close its files (freeing their disk space), drop its decrypted
        segments, frames and cached renders from this process."""
        with self._lock:
            pyramid = self._pyramids.pop(slide_id, None)
            for key in [k for k in self._rendered if k[1] == slide_id]:
                del self._rendered[key]
        if pyramid is not None:
            pyramid.close(forget=True)

    def evict_missing(self) -> list[str]:
        """After a governance change: close every open slide that no longer exists (erased), so its
        decrypted files and keys leave this process's memory and its disk space is freed."""
        with self._lock:
            open_ids = list(self._pyramids.keys())
        gone = [slide_id for slide_id in open_ids if not self._catalog.slide_exists(slide_id)]
        for slide_id in gone:
            self.evict(slide_id)
        return gone

    def _cached(self, key: tuple, produce: Callable[[], T]) -> T:
        with self._lock:
            hit = self._rendered.get(key)
        if hit is not None:
            return hit  # type: ignore[return-value]  # keys name the kind: a 'dz' key holds a DeepZoomTile
        result = produce()
        if result.worth_caching:
            with self._lock:
                self._rendered[key] = result
        return result


__all__ = ["SlideNotFound", "TileNotFound", "TileService"]
