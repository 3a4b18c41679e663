"""The ingest pipeline for one slide: small steps, one commit at the end.

validate → checksum → de-duplicate → convert (de-identified) → verify → publish blobs → register.

Pixel size: the file's own µm/px is authoritative; a value the submitter supplies (`--mpp`, the
sidecar's `mpp` column) fills in where the file has none, and one that disagrees with the file is
reported, never silently used. A slide with neither is stored with its pixel size unknown: the
catalog's mpp is None, and the DICOM (which must carry a Pixel Spacing) gets NOMINAL_SPACING_MM,
which the provenance marks as nominal.

Everything up to "publish" happens in a private staging folder; "register" is a single catalog
transaction. A crash before the commit leaves at most unreferenced blobs, which the next run's
`Node.recover` deletes; the catalog never points to a blob that is not in place. The steps before
registration run in worker processes (`prepare_slide`); registration runs in the parent so the
catalog has one writer.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import openslide
import pydicom
from sqlalchemy.orm import Session
from wsidicom import WsiDicom

from slidebank import __version__
from slidebank.access.principal import Principal
from slidebank.access.pseudonyms import Pseudonyms
from slidebank.audit import AuditLog
from slidebank.catalog import SLIDE_ID_PATTERN, Catalog, DuplicateSourceError, SlideIdTakenError
from slidebank.catalog.instances import identity_of
from slidebank.catalog.records import (
    DicomIdentity,
    IngestedSlide,
    LevelInfo,
    SlideDescription,
    StoredFile,
)
from slidebank.catalog.registration import dataset_alias
from slidebank.ingest.convert import ConversionError, convert_to_dicom
from slidebank.ingest.deidentify import (
    PROFILE_NAME,
    DeidentificationError,
    build_wsi_metadata,
    pseudonym,
    verify_deidentified,
)
from slidebank.ingest.sidecar import MPP_RANGE
from slidebank.slides.inspect import Limits, SlideRejected, SourceInfo, inspect_source, pixel_size_hint
from slidebank.slides.source import SourceSlide
from slidebank.storage import BlobStore, sha256_file
from slidebank.storage.crypt import NodeKeys

THUMBNAIL_SIZE = 512
Status = Literal["ingested", "duplicate", "rejected"]
# What the DICOM says where nobody knows the pixel size: DICOM WSI requires a Pixel Spacing, and
# 1 µm is a round "unit" no scanner produces at full resolution, so it is not mistaken for a scan's.
NOMINAL_SPACING_MM = 0.001
# A supplied pixel size further than this (relative) from the file's is a disagreement worth saying.
MPP_TOLERANCE = 0.02


@dataclass(frozen=True)
class IngestRequest:
    """One source slide to ingest, with what the submitter said about it."""

    source: SourceSlide
    description: SlideDescription = field(default_factory=SlideDescription)


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one source slide; the CLI prints exactly this."""

    path: str
    status: Status
    slide_id: str | None = None
    error: str | None = None
    size: int = 0
    seconds: float = 0.0
    method: str | None = None
    warnings: tuple[str, ...] = ()  # ingested, but the submitter should know (e.g. pixel size unknown)

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"path": self.path, "status": self.status, "slide_id": self.slide_id,
                                "error": self.error}
        if self.warnings:
            line["warnings"] = list(self.warnings)
        return line


@dataclass(frozen=True)
class PixelSize:
    """The µm/px a slide is stored with, where it came from, and anything the submitter should hear."""

    mpp: tuple[float, float] | None  # None: unknown
    origin: Literal["file", "supplied", "unknown"]
    warning: str | None = None

    @property
    def dicom_spacing_mm(self) -> tuple[float, float]:
        """(x, y) mm per pixel for the DICOM: the real one, or the nominal one when unknown."""
        if self.mpp is None:
            return (NOMINAL_SPACING_MM, NOMINAL_SPACING_MM)
        return (self.mpp[0] / 1000, self.mpp[1] / 1000)

    def provenance(self) -> dict[str, Any]:
        if self.mpp is None:
            return {"pixel_spacing": "unknown", "dicom_pixel_spacing_mm": NOMINAL_SPACING_MM,
                    "dicom_pixel_spacing_is": "nominal, not a measurement"}
        return {"pixel_spacing": self.origin}


def resolve_pixel_size(info: SourceInfo, supplied: float | None) -> PixelSize:
    """The file's pixel size wins; a supplied one fills the gap; a disagreement is reported.

    A file's value outside MPP_RANGE is no microscope's (typically an image editor's 72 dpi written
    as TIFF resolution): it counts as missing, and the submitter is told.
    """
    low, high = MPP_RANGE
    in_file = (info.mpp_x, info.mpp_y) if info.mpp_x is not None and info.mpp_y is not None else None
    if in_file is not None and all(low <= value <= high for value in in_file):
        warning = None
        if supplied is not None and abs(supplied - in_file[0]) > MPP_TOLERANCE * in_file[0]:
            warning = (f"the supplied pixel size ({supplied:g} µm/px) was not used: the file says "
                       f"{in_file[0]:g} µm/px, and the scanner's own value is kept")
        return PixelSize(in_file, "file", warning)
    implausible = (f"the file's pixel size ({in_file[0]:g} µm/px) is not a microscope's and was ignored"
                   if in_file is not None else None)
    if supplied is not None:
        return PixelSize((supplied, supplied), "supplied", implausible)
    unknown = f"pixel size unknown, stored without one — {pixel_size_hint(info)}"
    return PixelSize(None, "unknown", f"{implausible}; {unknown}" if implausible else unknown)


def with_default_mpp(request: IngestRequest, mpp: float | None) -> IngestRequest:
    """`ingest --mpp`: applies to every slide whose sidecar row gives none."""
    if mpp is None or request.description.mpp is not None:
        return request
    return replace(request, description=replace(request.description, mpp=mpp))


@dataclass(frozen=True)
class IngestContext:
    """What the steps before registration need of the node: they run in worker processes."""

    catalog: Catalog
    store: BlobStore
    keys: NodeKeys
    secret: bytes  # keys the pseudonyms
    limits: Limits


@dataclass(frozen=True)
class Registrar:
    """What registration needs: it runs in the parent, the catalog's one writer."""

    catalog: Catalog
    store: BlobStore
    audit: AuditLog
    pseudonyms: Pseudonyms | None  # only where the node keeps the way back
    actor: Principal


def new_slide_id() -> str:
    return f"sb-{secrets.token_hex(6)}"


def validate_slide_id(slide_id: str) -> str:
    if not SLIDE_ID_PATTERN.fullmatch(slide_id):
        raise SlideRejected(
            f"slide id {slide_id!r} is not valid",
            "use 1–64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return slide_id


def checksum_source(source: SourceSlide) -> tuple[str, int]:
    """SHA-256 of the original; multi-file slides hash the sorted list of their files' digests."""
    if len(source.files) == 1:
        ref = sha256_file(source.files[0])
        return ref.sha256, ref.size
    base = source.path.parent
    manifest = hashlib.sha256()
    total = 0
    for file in sorted(source.files):
        ref = sha256_file(file)
        total += ref.size
        manifest.update(f"{ref.sha256}  {file.relative_to(base).as_posix()}\n".encode())
    return manifest.hexdigest(), total


def _tool_versions() -> dict[str, str]:
    versions = {"slidebank": __version__, "openslide": openslide.__library_version__}
    for package in ("wsidicom", "wsidicomizer", "opentile", "pydicom", "tifffile", "dicom-anonymizer"):
        versions[package] = version(package)
    return versions


def _describe_stored(
    files: tuple[Path, ...],
) -> tuple[list[tuple[Path, int, DicomIdentity]], list[LevelInfo], Any, str]:
    """Read back what we wrote: proves it opens, and gives levels, each file's DICOM identity, tile
    size and transfer syntax."""
    with WsiDicom.open([str(f) for f in files]) as wsi:
        base = wsi.levels[0]
        levels = [
            LevelInfo(lvl.size.width, lvl.size.height, base.size.width / lvl.size.width) for lvl in wsi.levels
        ]
        smallest = wsi.levels[-1]
        thumbnail = wsi.read_region((0, 0), smallest.level, (smallest.size.width, smallest.size.height))
        tile = wsi.tile_size
    widths = [level.width for level in levels]
    file_levels: list[tuple[Path, int, DicomIdentity]] = []
    transfer_syntax = ""
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        level = widths.index(int(header.TotalPixelMatrixColumns))
        file_levels.append((path, level, identity_of(header)))
        if level == 0:
            transfer_syntax = str(header.file_meta.TransferSyntaxUID)
    thumbnail.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return file_levels, levels, (tile, thumbnail.convert("RGB")), transfer_syntax


def prepare_slide(context: IngestContext, request: IngestRequest, threads: int = 1) -> IngestedSlide | IngestOutcome:
    """Every step but registration; safe to run in a worker process. Returns an outcome when done early."""
    started = time.monotonic()
    source = request.source
    try:
        info = inspect_source(source, context.limits)
        source_sha256, source_size = checksum_source(source)
        existing = context.catalog.slide_id_for_source(source_sha256)
        if existing:
            return IngestOutcome(source.display_name, "duplicate", existing, size=source_size)
        slide_id = validate_slide_id(request.description.slide_id or new_slide_id())
        if context.catalog.slide_exists(slide_id):
            raise SlideRejected(f"slide id {slide_id!r} is already taken", "choose another --slide-id")
        return _convert_and_publish(context, request, info, slide_id, source_sha256, source_size, threads, started)
    except (SlideRejected, ConversionError, DeidentificationError) as error:
        return IngestOutcome(source.display_name, "rejected", error=str(error), size=source.size)


def _convert_and_publish(
    node: IngestContext,
    request: IngestRequest,
    info: SourceInfo,
    slide_id: str,
    source_sha256: str,
    source_size: int,
    threads: int,
    started: float,
) -> IngestedSlide:
    secret = node.secret
    description = request.description
    given = description.sample_aliases  # a bundle's aliases are pseudonyms already: kept
    subject = given[0] if given else pseudonym(secret, "subject", description.subject or f"source:{source_sha256}")
    pixel_size = resolve_pixel_size(info, description.mpp)
    metadata = build_wsi_metadata(
        slide_id=slide_id,
        subject_pseudonym=subject,
        manufacturer=info.scanner_manufacturer,
        model=info.scanner_model,
        pixel_spacing_mm=pixel_size.dicom_spacing_mm,
    )
    with node.store.staging_dir() as staging:
        result = convert_to_dicom(request.source, info, metadata, staging / "dicom", threads=threads,
                                  scratch=staging / "scratch")
        verify_deidentified(result.files, {slide_id, subject, f"{slide_id}-sample", slide_id[:16]})
        file_levels, levels, (tile, thumbnail), transfer_syntax = _describe_stored(result.files)
        thumbnail_path = staging / "thumbnail.jpg"
        buffer = io.BytesIO()
        thumbnail.save(buffer, "JPEG", quality=85)
        thumbnail_path.write_bytes(buffer.getvalue())

        stored: list[StoredFile] = []  # encrypted at rest, each with its own key sealed to the node
        for path, level, identity in file_levels:
            ref = node.store.publish(path, node.keys, intend=node.catalog.note_pending_blob)
            stored.append(StoredFile("volume", ref.sha256, ref.size, level, key_header=ref.key_header, dicom=identity))
        thumb_ref = node.store.publish(thumbnail_path, node.keys, intend=node.catalog.note_pending_blob)
        stored.append(StoredFile("thumbnail", thumb_ref.sha256, thumb_ref.size, None, "image/jpeg",
                                 thumb_ref.key_header))

    provenance = {
        "ingested_at": datetime.now(UTC).isoformat(),
        "source_name": pseudonym(secret, "source", request.source.path.name),
        "source_files": len(request.source.files),
        "conversion": result.method,
        "source_reader": result.source_reader,
        **pixel_size.provenance(),
        "deidentification": {
            "profile": PROFILE_NAME,
            "dropped_associated_images": list(info.associated_images),
        },
        "tools": _tool_versions(),
        "seconds": round(time.monotonic() - started, 3),
    }
    if pixel_size.warning:
        provenance["warnings"] = [pixel_size.warning]
    return IngestedSlide(
        slide_id=slide_id,
        source_sha256=source_sha256,
        source_size=source_size,
        source_name_pseudonym=provenance["source_name"],
        original_format=info.original_format,
        vendor=info.vendor,
        width=info.width,
        height=info.height,
        tile_width=tile.width,
        tile_height=tile.height,
        levels=tuple(levels),
        mpp_x=pixel_size.mpp[0] if pixel_size.mpp else None,
        mpp_y=pixel_size.mpp[1] if pixel_size.mpp else None,
        objective_power=info.objective_power,
        scanner_manufacturer=info.scanner_manufacturer,
        scanner_model=info.scanner_model,
        transfer_syntax=transfer_syntax,
        source_associated_images=info.associated_images,
        files=tuple(stored),
        thumbnail_sha256=thumb_ref.sha256,
        description=_pseudonymised(description, secret, subject, slide_id),
        provenance=provenance,
    )


def _pseudonymised(description: SlideDescription, secret: bytes, subject: str, slide_id: str) -> SlideDescription:
    """Submitters' case, specimen, block and slide labels are accession numbers: identifying, so keyed."""
    def keyed(kind: str, value: str | None) -> str | None:
        return pseudonym(secret, kind, value) if value else None

    if description.sample_aliases:  # a bundle's: pseudonymous already
        return replace(description, subject=subject, slide_id=slide_id)

    return replace(
        description,
        subject=subject,
        slide_id=slide_id,
        case=keyed("case", description.case),
        specimen=keyed("specimen", description.specimen),
        block=keyed("block", description.block),
        slide=keyed("slide", description.slide),
    )


def register_slide(node: Registrar, request: IngestRequest, prepared: IngestedSlide | IngestOutcome) -> IngestOutcome:
    """The one transactional boundary: the slide, its audit entry and the way back from its subject's
    pseudonym (where kept) exist once this commits, and not before."""
    if isinstance(prepared, IngestOutcome):
        return prepared
    name = request.source.display_name
    seconds = float(prepared.provenance.get("seconds", 0.0))
    subject, pseudonym = request.description.subject, prepared.description.subject

    def also(session: Session) -> None:
        if node.pseudonyms is not None and subject and pseudonym:
            node.pseudonyms.remember(session, pseudonym, subject)
        node.audit.append(session, node.actor.name, "slide.ingest", dataset=dataset_alias(prepared.description.dataset),
                          slide_id=prepared.slide_id,
                          detail={"source_sha256": prepared.source_sha256,
                                  "conversion": prepared.provenance.get("conversion")})

    try:
        slide_id = node.catalog.register(prepared, also)
    except DuplicateSourceError as duplicate:
        _discard_blobs(node, prepared)
        return IngestOutcome(name, "duplicate", duplicate.slide_id, size=prepared.source_size)
    except SlideIdTakenError:
        _discard_blobs(node, prepared)
        return IngestOutcome(
            name, "rejected", error=f"slide id {prepared.slide_id!r} is already taken — choose another --slide-id"
        )
    return IngestOutcome(
        name,
        "ingested",
        slide_id,
        size=prepared.source_size,
        seconds=seconds,
        method=str(prepared.provenance.get("conversion")),
        warnings=tuple(prepared.provenance.get("warnings", ())),
    )


def _discard_blobs(node: Registrar, prepared: IngestedSlide) -> None:
    referenced = node.catalog.referenced_blobs([stored.sha256 for stored in prepared.files])
    for stored in prepared.files:
        if stored.sha256 not in referenced:
            node.store.delete(stored.sha256)
