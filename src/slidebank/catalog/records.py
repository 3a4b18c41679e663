"""Plain records that cross the boundary between the ingest pipeline and the catalog.

Ingest knows files and pixels; the catalog knows the BIGPICTURE object graph. These frozen
dataclasses are the only thing the two share, so either side can change its internals freely.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class SlideDescription:
    """What a submitter says about one slide (a sidecar row), every field optional.

    `subject` is already pseudonymised when it reaches the catalog: the ingest pipeline replaces
    the submitter's identifier with a keyed pseudonym before registration.
    """

    dataset: str | None = None
    subject: str | None = None
    species: str | None = None
    sex: str | None = None
    age_at_extraction: str | None = None
    case: str | None = None
    specimen: str | None = None
    anatomical_site: str | None = None
    specimen_type: str | None = None
    fixation_type: str | None = None
    block: str | None = None
    block_preparation: str | None = None
    slide: str | None = None
    stain: str | None = None
    diagnosis: str | None = None
    slide_id: str | None = None
    mpp: float | None = None  # µm per level-0 pixel as the submitter knows it; used where the file has none
    # The exact aliases of the sample chain (being, case, specimen, block, slide), as a submission bundle
    # names them: already pseudonymous, so kept as they are. None: built from the labels above.
    sample_aliases: tuple[str, str, str, str, str] | None = None

    def merged_over(self, base: SlideDescription) -> SlideDescription:
        """Fields set here win; unset ones fall back to `base` (e.g. CLI --dataset)."""
        values = {k: v for k, v in asdict(self).items() if v not in (None, "")}
        return SlideDescription(**{**asdict(base), **values})


@dataclass(frozen=True)
class LevelInfo:
    """One level of the stored (canonical) pyramid."""

    width: int
    height: int
    downsample: float


@dataclass(frozen=True)
class DicomIdentity:
    """What DICOMweb searches and returns about one stored DICOM instance, read off its header
    (`catalog.instances.identity_of`); strings are "" where the file has no value."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    modality: str
    patient_id: str
    patient_name: str
    study_date: str
    study_time: str
    study_id: str
    study_description: str
    accession_number: str
    series_number: int | None
    series_description: str
    instance_number: int | None
    image_type: str
    number_of_frames: int
    rows: int
    columns: int
    total_pixel_matrix_rows: int | None
    total_pixel_matrix_columns: int | None
    samples_per_pixel: int
    photometric_interpretation: str
    bits_allocated: int


@dataclass(frozen=True)
class StoredFile:
    """One blob of the canonical slide in the content-addressed store."""

    role: str  # "volume" (a pyramid level) or "thumbnail"
    sha256: str
    size: int
    level: int | None = None
    media_type: str = "application/dicom"
    key_header: bytes | None = None  # crypt4gh header sealing the blob's key (None: stored in clear)
    dicom: DicomIdentity | None = None  # a DICOM instance's identity, as registered (volumes)


@dataclass(frozen=True)
class IngestedSlide:
    """Everything the pipeline learned and wrote for one slide, ready to register in one transaction."""

    slide_id: str
    source_sha256: str
    source_size: int
    source_name_pseudonym: str
    original_format: str
    vendor: str
    width: int
    height: int
    tile_width: int
    tile_height: int
    levels: tuple[LevelInfo, ...]
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None
    scanner_manufacturer: str | None
    scanner_model: str | None
    transfer_syntax: str
    source_associated_images: tuple[str, ...]
    files: tuple[StoredFile, ...]
    thumbnail_sha256: str | None
    description: SlideDescription
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def canonical_size(self) -> int:
        return sum(f.size for f in self.files)
