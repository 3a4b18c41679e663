"""Stored frames kept in memory, shared by every slide a client opens: encoded as fetched, and decoded.

Training samplers come back to the same frames (neighbouring and overlapping patches, several
epochs). An encoded frame (tens of kB) spares a request; a decoded one (up to ~1 MB) spares the
decode too. A region decodes a frame only down to the last row it needs, so a decoded frame may be
partial: it serves later regions that need no more rows than it has.
"""

from __future__ import annotations

import threading

import numpy as np
from cachetools import LRUCache

FrameKey = tuple[str, int, int, int]  # slide id, level, column, row
ENCODED_SHARE = 0.25  # of the budget, for encoded frames


class FrameCache:
    """Thread-safe LRUs of encoded and decoded frames, bounded in bytes together (0: keep nothing)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        encoded_bytes = int(max_bytes * ENCODED_SHARE)
        self._encoded: LRUCache[FrameKey, bytes] = LRUCache(max(encoded_bytes, 1), getsizeof=len)
        self._decoded: LRUCache[FrameKey, np.ndarray] = LRUCache(max(max_bytes - encoded_bytes, 1),
                                                                 getsizeof=lambda a: a.nbytes)
        self._lock = threading.Lock()

    def decoded(self, key: FrameKey, rows: int) -> np.ndarray | None:
        """The decoded frame if it has at least `rows` rows."""
        with self._lock:
            frame = self._decoded.get(key)
        return frame if frame is not None and frame.shape[0] >= rows else None

    def encoded(self, key: FrameKey) -> bytes | None:
        with self._lock:
            return self._encoded.get(key)

    def put(self, key: FrameKey, encoded: bytes | None, decoded: np.ndarray | None) -> None:
        if decoded is not None:
            decoded.setflags(write=False)
        with self._lock:
            if encoded is not None and len(encoded) <= self._encoded.maxsize:
                self._encoded[key] = encoded
            if decoded is not None and decoded.nbytes <= self._decoded.maxsize:
                previous = self._decoded.get(key)
                if previous is None or previous.shape[0] < decoded.shape[0]:
                    self._decoded[key] = decoded

    def clear(self) -> None:
        with self._lock:
            self._encoded.clear()
            self._decoded.clear()

    @property
    def current_bytes(self) -> int:
        with self._lock:
            return int(self._encoded.currsize + self._decoded.currsize)
