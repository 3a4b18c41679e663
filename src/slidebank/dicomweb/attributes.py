"""The attributes QIDO-RS matches on and returns, and how each is written in DICOM JSON (PS3.18 F.2).

Each attribute belongs to a level (study, series, instance) and is either a column of the instance
index or computed per answer (counts, ModalitiesInStudy, AvailableTransferSyntaxUID). VRs come from
pydicom's data dictionary, not from a table of our own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, tag_for_keyword

Level = Literal["study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")
Kind = Literal["uid", "text", "name", "date", "time", "number", "computed"]


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: Level
    kind: Kind
    column: str | None = None  # the DicomInstance column (None: computed)

    @property
    def tag(self) -> str:
        """The 8-hex-digit tag, as DICOM JSON keys it."""
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return f"{tag:08X}"

    @property
    def vr(self) -> str:
        return dictionary_VR(self.keyword)


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("StudyInstanceUID", "study", "uid", "study_uid"),
    Attribute("StudyDate", "study", "date", "study_date"),
    Attribute("StudyTime", "study", "time", "study_time"),
    Attribute("StudyID", "study", "text", "study_id"),
    Attribute("AccessionNumber", "study", "text", "accession_number"),
    Attribute("StudyDescription", "study", "text", "study_description"),
    Attribute("PatientID", "study", "text", "patient_id"),
    Attribute("PatientName", "study", "name", "patient_name"),
    Attribute("ReferringPhysicianName", "study", "computed"),  # not kept: always empty
    Attribute("ModalitiesInStudy", "study", "computed"),
    Attribute("NumberOfStudyRelatedSeries", "study", "computed"),
    Attribute("NumberOfStudyRelatedInstances", "study", "computed"),
    Attribute("SeriesInstanceUID", "series", "uid", "series_uid"),
    Attribute("Modality", "series", "text", "modality"),
    Attribute("SeriesNumber", "series", "number", "series_number"),
    Attribute("SeriesDescription", "series", "text", "series_description"),
    Attribute("NumberOfSeriesRelatedInstances", "series", "computed"),
    Attribute("SOPInstanceUID", "instance", "uid", "sop_instance_uid"),
    Attribute("SOPClassUID", "instance", "uid", "sop_class_uid"),
    Attribute("InstanceNumber", "instance", "number", "instance_number"),
    Attribute("ImageType", "instance", "text", "image_type"),
    Attribute("NumberOfFrames", "instance", "number", "number_of_frames"),
    Attribute("Rows", "instance", "number", "rows"),
    Attribute("Columns", "instance", "number", "columns"),
    Attribute("TotalPixelMatrixRows", "instance", "number", "total_pixel_matrix_rows"),
    Attribute("TotalPixelMatrixColumns", "instance", "number", "total_pixel_matrix_columns"),
    Attribute("SamplesPerPixel", "instance", "number", "samples_per_pixel"),
    Attribute("PhotometricInterpretation", "instance", "text", "photometric_interpretation"),
    Attribute("BitsAllocated", "instance", "number", "bits_allocated"),
    Attribute("AvailableTransferSyntaxUID", "instance", "computed"),
)
BY_KEYWORD = {a.keyword: a for a in ATTRIBUTES}
BY_TAG = {a.tag: a for a in ATTRIBUTES}

# What each level returns without includefield (PS3.18 tables 10.6.3-3 to -5), besides what was matched.
DEFAULTS: dict[Level, tuple[str, ...]] = {
    "study": ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
              "PatientName", "PatientID", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances", "StudyDescription"),
    "series": ("StudyInstanceUID", "Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID",
               "NumberOfSeriesRelatedInstances"),
    "instance": ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "InstanceNumber",
                 "Rows", "Columns", "BitsAllocated", "NumberOfFrames", "ImageType", "TotalPixelMatrixRows",
                 "TotalPixelMatrixColumns", "SamplesPerPixel", "PhotometricInterpretation"),
}


def attribute(name: str) -> Attribute | None:
    """An attribute by keyword or 8-hex-digit tag, as query parameters name them."""
    return BY_KEYWORD.get(name) or BY_TAG.get(name.upper())


def at_or_above(level: Level) -> set[str]:
    """Keywords of the attributes a search at `level` may match on and return."""
    allowed = LEVELS[: LEVELS.index(level) + 1]
    return {a.keyword for a in ATTRIBUTES if a.level in allowed}


def element(keyword: str, values: Iterable[Any]) -> tuple[str, dict[str, Any]]:
    """One DICOM JSON element: (tag, {"vr": …, "Value": […]}); no Value when there is none."""
    described = BY_KEYWORD.get(keyword)
    tag = described.tag if described else f"{tag_for_keyword(keyword):08X}"
    vr = dictionary_VR(keyword)
    kept = [value for value in values if value not in (None, "")]
    if vr == "PN":
        kept = [{"Alphabetic": str(value)} for value in kept]
    elif vr in ("IS", "US", "UL", "SL", "SS"):
        kept = [int(value) for value in kept]
    else:
        kept = [str(value) for value in kept]
    return tag, ({"vr": vr, "Value": kept} if kept else {"vr": vr})
