"""The canonical stored slide's files: which blobs make the pyramid, and writing them out decrypted.

Stored files are encrypted at rest; everything here reads them through an `open_blob` callable
(the node's), which decrypts only the segments that are read, so no plaintext copy is ever written
to disk except by `export_volumes`, which is what an administrator asks for.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom

from slidebank.access.errors import SlideNotFound
from slidebank.access.principal import Principal
from slidebank.audit import AuditLog
from slidebank.catalog import Catalog
from slidebank.catalog.instances import identity_of
from slidebank.catalog.records import StoredFile
from slidebank.slides.reader import StoredSlide
from slidebank.storage.blobstore import BlobFile

OpenBlob = Callable[[StoredFile], BlobFile]
logger = logging.getLogger(__name__)


def volume_files(files: list[StoredFile], slide_id: str) -> list[StoredFile]:
    """The DICOM files of a slide among its stored files; SlideNotFound if it has none."""
    volumes = [f for f in files if f.role == "volume"]
    if not volumes:
        raise SlideNotFound(f"no slide {slide_id!r}")
    return volumes


def open_stored_slide(catalog: Catalog, open_blob: OpenBlob, slide_id: str) -> StoredSlide:
    """The slide's pyramid for reading (OpenSlide-shaped; the caller checks who may read it). The
    catalog is the authority on the pixel size: a slide stored with it unknown says so."""
    volumes = volume_files(catalog.stored_files(slide_id), slide_id)
    blobs = []
    try:
        for stored in volumes:
            blobs.append(open_blob(stored))
        return StoredSlide(blobs, catalog.pixel_size(slide_id), mpp_from_files=False)
    except BaseException:
        for blob in blobs:
            blob.close()
        raise


def read_whole(stored: StoredFile, open_blob: OpenBlob) -> bytes:
    """A small stored file (a thumbnail), decrypted."""
    blob = open_blob(stored)
    try:
        return blob.pread(0, blob.size)
    finally:
        blob.close()


def export_volumes(volumes: list[StoredFile], open_blob: OpenBlob, slide_id: str, destination: Path) -> list[Path]:
    """Write the slide's DICOM files, decrypted, to `destination/<slide_id>/level-N-k.dcm`."""
    folder = destination / slide_id  # slide ids are validated: no separators, no leading dot
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index, stored in enumerate(sorted(volumes, key=lambda f: (f.level or 0, f.sha256))):
        target = folder / f"level-{stored.level or 0}-{index}.dcm"
        blob = open_blob(stored)
        try:
            with blob.stream() as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 4 * 1024 * 1024)
        finally:
            blob.close()
        written.append(target)
    return written


def export_slide(catalog: Catalog, audit: AuditLog, open_blob: OpenBlob, actor: Principal, slide_id: str,
                 destination: Path) -> list[Path]:
    """An administrator's export of the canonical DICOM files, decrypted, audited."""
    dataset = catalog.slide_dataset(slide_id)
    if dataset is None or not actor.can_read(dataset):
        raise SlideNotFound(f"no slide {slide_id!r}")
    written = export_volumes(volume_files(catalog.stored_files(slide_id), slide_id), open_blob, slide_id, destination)
    audit.record(actor.name, "slide.export", dataset=dataset, slide_id=slide_id, grant=actor.grants.get(dataset),
                 detail={"files": len(written)})
    return written


def index_stored_instances(catalog: Catalog, open_blob: OpenBlob) -> int:
    """Record the DICOM identity of stored files that have none (slides stored before DICOMweb);
    one file per transaction, so an interrupted run resumes. Returns how many were indexed; a file
    whose header cannot be read is left out (and logged), never guessed."""
    indexed, after = 0, 0
    while batch := catalog.files_without_identity(after):
        for file_id, stored in batch:
            after = file_id
            try:
                blob = open_blob(stored)
                try:
                    with blob.stream() as handle:
                        identity = identity_of(pydicom.dcmread(handle, stop_before_pixels=True))
                finally:
                    blob.close()
            except Exception as error:  # noqa: BLE001 - any unreadable file is reported, not fatal
                logger.warning("stored file %s has no readable DICOM header: %s", stored.sha256[:12], error)
                continue
            indexed += catalog.record_identity(file_id, identity)
    return indexed
