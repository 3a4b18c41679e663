"""The canonical stored slide: its DICOM blobs, opened with wsidicom, exported for administrators."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from wsidicom import WsiDicom

if TYPE_CHECKING:
    from slidebank.node import Node


def volume_blobs(node: Node, slide_id: str) -> list[tuple[int, str]]:
    """(level, sha256) of every DICOM file of a slide; LookupError if the slide is unknown."""
    detail = node.catalog.get_slide(slide_id)
    if detail is None:
        raise LookupError(f"no slide {slide_id!r}")
    return [(f["level"], f["sha256"]) for f in detail["files"] if f["role"] == "volume"]


def open_stored_slide(node: Node, slide_id: str) -> WsiDicom:
    """Open the stored pyramid for reading (pixels never leave through here without the caller's checks)."""
    paths = [str(node.store.blob_path(sha)) for _, sha in volume_blobs(node, slide_id)]
    return WsiDicom.open(paths)


def export_slide(node: Node, slide_id: str, destination: Path) -> list[Path]:
    """Copy the slide's DICOM files to `destination/<slide_id>/level-N[-k].dcm`."""
    blobs = volume_blobs(node, slide_id)
    folder = destination / slide_id  # slide ids are validated: no separators, no leading dot
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index, (level, sha) in enumerate(sorted(blobs)):
        target = folder / f"level-{level}-{index}.dcm"
        with node.store.open(sha) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 4 * 1024 * 1024)
        written.append(target)
    return written
