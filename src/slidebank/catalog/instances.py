"""The DICOM identity of stored files: read off a header, registered with the slide, backfilled.

DICOMweb answers from these rows (`db.models.DicomInstance`) instead of the encrypted files; the
rows are written in the slide's registration transaction, so an instance is searchable exactly when
its slide is. Slides stored before the table existed are indexed once (`files_without_identity`,
`record_identity`), one file per transaction, so an interrupted backfill resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from slidebank.catalog.records import DicomIdentity, StoredFile
from slidebank.db.models import DicomInstance, Image, ImageFile


def _text(dataset: pydicom.Dataset, keyword: str, length: int) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value)[:length]


def _number(dataset: pydicom.Dataset, keyword: str) -> int | None:
    value = dataset.get(keyword)
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def identity_of(dataset: pydicom.Dataset) -> DicomIdentity:
    """The identity of an instance from its header (read with `stop_before_pixels`); ValueError
    when it lacks the UIDs every DICOM instance has."""
    uids = {keyword: _text(dataset, keyword, 64) for keyword in
            ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")}
    if not all(uids.values()):
        raise ValueError(f"not a DICOM instance: missing {', '.join(k for k, v in uids.items() if not v)}")
    meta = getattr(dataset, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    return DicomIdentity(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax=syntax[:64],
        modality=_text(dataset, "Modality", 16),
        patient_id=_text(dataset, "PatientID", 64),
        patient_name=_text(dataset, "PatientName", 64),
        study_date=_text(dataset, "StudyDate", 8),
        study_time=_text(dataset, "StudyTime", 16),
        study_id=_text(dataset, "StudyID", 16),
        study_description=_text(dataset, "StudyDescription", 64),
        accession_number=_text(dataset, "AccessionNumber", 16),
        series_number=_number(dataset, "SeriesNumber"),
        series_description=_text(dataset, "SeriesDescription", 64),
        instance_number=_number(dataset, "InstanceNumber"),
        image_type="\\".join(str(value) for value in dataset.get("ImageType", []))[:64],
        number_of_frames=_number(dataset, "NumberOfFrames") or 1,
        rows=_number(dataset, "Rows") or 0,
        columns=_number(dataset, "Columns") or 0,
        total_pixel_matrix_rows=_number(dataset, "TotalPixelMatrixRows"),
        total_pixel_matrix_columns=_number(dataset, "TotalPixelMatrixColumns"),
        samples_per_pixel=_number(dataset, "SamplesPerPixel") or 1,
        photometric_interpretation=_text(dataset, "PhotometricInterpretation", 16),
        bits_allocated=_number(dataset, "BitsAllocated") or 8,
    )


def add_identities(session: Session, image: Image, stored: tuple[StoredFile, ...]) -> None:
    """Register the identity of each of a new image's stored DICOM files (after its files are flushed)."""
    ids = {f.sha256: f.id for f in image.files}
    for file in stored:
        if file.dicom is not None:
            session.add(DicomInstance(image_id=image.id, file_id=ids[file.sha256], **asdict(file.dicom)))


def files_without_identity(session: Session, after: int, limit: int) -> list[tuple[int, StoredFile]]:
    """Stored DICOM volumes not yet indexed (slides stored before DICOMweb), with their file ids
    (above `after`, in order: a caller pages through them)."""
    rows = session.scalars(
        select(ImageFile)
        .outerjoin(DicomInstance, DicomInstance.file_id == ImageFile.id)
        .where(ImageFile.role == "volume", DicomInstance.id.is_(None), ImageFile.id > after)
        .order_by(ImageFile.id).limit(limit)
    )
    return [(f.id, StoredFile(f.role, f.sha256, f.size, f.level, f.media_type, f.key_header)) for f in rows]


def record_identity(session: Session, file_id: int, identity: DicomIdentity) -> bool:
    """Index one stored file; False if it is gone (erased meanwhile)."""
    file = session.get(ImageFile, file_id)
    if file is None:
        return False
    session.add(DicomInstance(image_id=file.image_id, file_id=file_id, **asdict(identity)))
    return True
