"""The DICOM identity of each stored canonical file, for DICOMweb (QIDO-RS search, WADO-RS lookup).

The stored files are encrypted; reading a header back to answer a search would decrypt a segment of
every file the search could match. This table holds, per stored DICOM instance, the attributes
QIDO-RS matches on and returns, written in the same transaction that registers the slide (and
backfilled for slides stored before it existed). Study and series attributes are repeated on each
of their instances: one table, one index lookup per search level, no joins beyond the image's
dataset for access.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from slidebank.db.models.base import Base

UID_LENGTH = 64  # DICOM UI values are at most 64 characters


class DicomInstance(Base):
    __tablename__ = "dicom_instances"
    __table_args__ = (
        Index(None, "study_uid", "series_uid"),
        Index(None, "series_uid"),
        Index(None, "patient_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("image_files.id", ondelete="CASCADE"), unique=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    study_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    series_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    transfer_syntax: Mapped[str] = mapped_column(String(UID_LENGTH))
    modality: Mapped[str] = mapped_column(String(16))
    patient_id: Mapped[str] = mapped_column(String(64))
    patient_name: Mapped[str] = mapped_column(String(64))
    study_date: Mapped[str] = mapped_column(String(8))  # DA, "" when the file has none
    study_time: Mapped[str] = mapped_column(String(16))  # TM
    study_id: Mapped[str] = mapped_column(String(16))
    study_description: Mapped[str] = mapped_column(String(64))
    accession_number: Mapped[str] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    image_type: Mapped[str] = mapped_column(String(64))  # values joined with "\"
    number_of_frames: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[int] = mapped_column(Integer)
    total_pixel_matrix_rows: Mapped[int | None] = mapped_column(Integer)
    total_pixel_matrix_columns: Mapped[int | None] = mapped_column(Integer)
    samples_per_pixel: Mapped[int] = mapped_column(Integer)
    photometric_interpretation: Mapped[str] = mapped_column(String(16))
    bits_allocated: Mapped[int] = mapped_column(Integer)
