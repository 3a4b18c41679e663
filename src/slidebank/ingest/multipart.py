"""multipart/related bodies (DICOMweb's instances and frames) written part by part to files.

STOW-RS requests and WADO-RS answers from a PACS can be gigabytes: python-multipart's streaming
parser hands each chunk to the part's file as it arrives, so nothing is held in memory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser

MAX_PARTS = 10000
_BOUNDARY = re.compile(r'boundary="?([^";,]{1,200})"?', re.IGNORECASE)


class BadMultipart(ValueError):
    """Not a multipart body of at most MAX_PARTS parts."""


def boundary_of(content_type: str) -> str:
    """The boundary of a multipart/related content type; BadMultipart if there is none."""
    found = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/related") or found is None:
        raise BadMultipart(f"not multipart/related with a boundary: {content_type[:100]!r}")
    return found.group(1)


class PartsToFiles:
    """Feed a body's chunks in order; each part lands in `folder/part-NNNNN.dcm`."""

    def __init__(self, boundary: str, folder: Path, first: int = 0) -> None:
        self.folder = folder
        self.parts: list[Path] = []
        self._first = first
        self._handle: IO[bytes] | None = None
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end})

    def _begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise BadMultipart(f"more than {MAX_PARTS} parts")
        self.parts.append(self.folder / f"part-{self._first + len(self.parts):05d}.dcm")
        self._handle = open(self.parts[-1], "wb")  # noqa: SIM115 - closed at the part's end or in close()

    def _data(self, chunk: bytes, start: int, end: int) -> None:
        assert self._handle is not None
        self._handle.write(chunk[start:end])

    def _end(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except BadMultipart:
            raise
        except Exception as error:  # noqa: BLE001 - python-multipart raises its own errors on a malformed body
            raise BadMultipart(f"not a readable multipart body: {error}") from error

    def close(self) -> list[Path]:
        """The part files, once the body has ended."""
        try:
            self._parser.finalize()
        except Exception as error:  # noqa: BLE001 - python-multipart raises its own errors on a truncated body
            raise BadMultipart(f"the multipart body ends early: {error}") from error
        finally:
            self._end()
        return self.parts
