"""The canonical stored slide: its DICOM blobs, decrypted on read, opened with wsidicom, exported.

Stored files are encrypted at rest; everything here reads them through `Node.open_blob`, which
decrypts only the segments that are read, so no plaintext copy is ever written to disk (except
by `export_slide`, which is what an administrator asks for).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from wsidicom import WsiDicom

from slidebank.catalog.records import StoredFile

if TYPE_CHECKING:
    from slidebank.node import Node
    from slidebank.storage.blobstore import BlobFile


def volume_files(node: Node, slide_id: str) -> list[StoredFile]:
    """The DICOM files of a slide (with their key headers); LookupError if the slide is unknown."""
    files = [f for f in node.catalog.stored_files(slide_id) if f.role == "volume"]
    if not files:
        raise LookupError(f"no slide {slide_id!r}")
    return files


def open_volume_blobs(node: Node, slide_id: str) -> list[BlobFile]:
    return [node.open_blob(f) for f in volume_files(node, slide_id)]


@contextmanager
def open_stored_slide(node: Node, slide_id: str) -> Iterator[WsiDicom]:
    """Open the stored pyramid for reading (pixels never leave through here without the caller's checks)."""
    blobs = open_volume_blobs(node, slide_id)
    wsi = WsiDicom.open_streams([blob.stream() for blob in blobs])
    try:
        yield wsi
    finally:
        wsi.close()
        for blob in blobs:
            blob.close()


def read_thumbnail(node: Node, slide_id: str) -> bytes:
    """The slide's stored JPEG thumbnail, decrypted; LookupError if there is none."""
    thumbnail = next((f for f in node.catalog.stored_files(slide_id) if f.role == "thumbnail"), None)
    if thumbnail is None:
        raise LookupError(f"no thumbnail of {slide_id!r}")
    blob = node.open_blob(thumbnail)
    try:
        return blob.pread(0, blob.size)
    finally:
        blob.close()


def export_slide(node: Node, slide_id: str, destination: Path) -> list[Path]:
    """Write the slide's DICOM files, decrypted, to `destination/<slide_id>/level-N-k.dcm`."""
    files = volume_files(node, slide_id)
    folder = destination / slide_id  # slide ids are validated: no separators, no leading dot
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index, stored in enumerate(sorted(files, key=lambda f: (f.level or 0, f.sha256))):
        target = folder / f"level-{stored.level or 0}-{index}.dcm"
        blob = node.open_blob(stored)
        try:
            with blob.stream() as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 4 * 1024 * 1024)
        finally:
            blob.close()
        written.append(target)
    return written
