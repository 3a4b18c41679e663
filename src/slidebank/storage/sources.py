"""Where a stored payload's bytes come from: a local file or an object in an S3 bucket.

Decryption and the file-object face only need "read these bytes at this offset", so both stores
hand their readers the same small interface and every reader above works over either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class RandomAccess(Protocol):
    """Bytes at any offset of one immutable payload; thread-safe."""

    name: str  # for messages and for libraries that label what they read
    size: int

    def pread(self, offset: int, length: int) -> bytes: ...  # pragma: no cover

    def close(self) -> None: ...  # pragma: no cover


class LocalFile:
    """A payload on local disk, read with pread on one descriptor."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def pread(self, offset: int, length: int) -> bytes:
        if self._fd < 0:
            raise ValueError(f"read from {self.name} after close")
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def as_source(payload: Path | RandomAccess) -> RandomAccess:
    return LocalFile(payload) if isinstance(payload, Path) else payload
