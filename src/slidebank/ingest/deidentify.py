"""De-identification: what the stored DICOM may say about the patient, and proof that it says no more.

Three layers, because one mistake here is a data breach:
1. The DICOM we write is described by metadata *we* build (`build_wsi_metadata`): pseudonyms for the
   patient and study, the slide id as container identifier, no dates of scan, no operator, no
   barcode, no label text. The converter is told to drop label and overview images.
2. Before writing, every dataset passes the DICOM PS3.15 Basic Application Level Confidentiality
   Profile (tables from `dicom-anonymizer`), keeping only the attributes we set on purpose.
3. After writing, `verify_deidentified` re-reads every output header and refuses the slide if any
   profile attribute still carries a value we did not put there, or a label/overview slipped in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from pathlib import Path

import pydicom
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from dicomanonymizer.simpledicomanonymizer import (
    anonymize_dataset,
    initialize_actions,
    keep,
)
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from wsidicom.metadata import (
    Equipment,
    Label,
    Patient,
    Pyramid,
    Series,
    Slide,
    SlideSample,
    Study,
    WsiMetadata,
)
from wsidicom.metadata import Image as ImageMetadata
from wsidicom.metadata.patient import PatientDeIdentification

from slidebank import __version__

PROFILE_VERSION = "dicomfields_2026c"
PROFILE_NAME = "DICOM PS3.15 Basic Application Level Confidentiality Profile"
PROFILE_CODE_MEANING = "Basic Application Confidentiality Profile"  # fits VR LO (64 chars)

# Attributes the profile would touch but that we set ourselves, with non-identifying values.
KEPT_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "MediaStorageSOPInstanceUID",
    "FrameOfReferenceUID",
    "PyramidUID",
    "DimensionOrganizationUID",
    "SpecimenUID",
    "ContainerIdentifier",
    "SpecimenIdentifier",
    "PatientName",
    "PatientID",
    "StudyID",
    "ContentDate",
    "ContentTime",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "OpticalPathIdentifier",
    "ConcatenationUID",
    "SOPInstanceUIDOfConcatenationSource",
    "ICCProfile",
)
# Of those, the ones whose value is non-identifying by construction (fresh UIDs, conversion time,
# scanner make); the others (patient, specimen, container ids) must equal a value we chose.
SAFE_KEYWORDS = frozenset(KEPT_KEYWORDS) - {
    "ContainerIdentifier",
    "SpecimenIdentifier",
    "PatientName",
    "PatientID",
    "StudyID",
}
# Dummy values that wsidicomizer (withheld acquisition time) and the profile's "replace" action write.
PLACEHOLDER_VALUES = frozenset(
    {
        "19700101000000+0000",
        "19700101000000",
        "Unknown",
        "ANONYMIZED",
        "00010101",
        "000000.00",
        "00010101010101.000000+0000",
    }
)
FORBIDDEN_IMAGE_TYPES = {"LABEL", "OVERVIEW"}


class DeidentificationError(Exception):
    """The converted slide still carries identifying data; it must not be stored."""


def pseudonym(secret: bytes, kind: str, value: str) -> str:
    """Keyed, stable pseudonym: the same subject always maps to the same alias on this node only."""
    digest = hmac.new(secret, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind[:4].upper()}-{digest[:20]}"


def _kept_tags() -> dict[tuple[int, int], Callable]:
    rules: dict[tuple[int, int], Callable] = {}
    for keyword in KEPT_KEYWORDS:
        tag = Tag(keyword)
        rules[(tag.group, tag.element)] = keep
    return rules


def _profile_rules() -> dict:
    return initialize_actions(PROFILE_VERSION)


def apply_confidentiality_profile(dataset: Dataset, _metadata: object | None = None) -> Dataset:
    """Run the Basic profile on a dataset before it is written (wsidicomizer post-processor hook)."""
    anonymize_dataset(
        dataset,
        extra_anonymization_rules=_kept_tags(),
        delete_private_tags=True,
        base_rules_gen=_profile_rules,
    )
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = PROFILE_CODE_MEANING
    return dataset


def build_wsi_metadata(
    *,
    slide_id: str,
    subject_pseudonym: str,
    manufacturer: str | None,
    model: str | None,
    pixel_spacing_mm: tuple[float, float] | None,
) -> WsiMetadata:
    """Metadata for the canonical DICOM: enough for research, nothing that identifies a person."""
    from wsidicom.geometry import SizeMm

    image = ImageMetadata(
        pixel_spacing=SizeMm(*pixel_spacing_mm) if pixel_spacing_mm else None,
    )
    return WsiMetadata(
        study=Study(uid=generate_uid(), identifier=slide_id[:16]),
        series=Series(uid=generate_uid(), number=1),
        patient=Patient(
            name=subject_pseudonym,
            identifier=subject_pseudonym,
            de_identification=PatientDeIdentification(identity_removed=True, methods=[PROFILE_CODE_MEANING]),
        ),
        equipment=Equipment(
            manufacturer=manufacturer,
            model_name=model,
            software_versions=[f"Slidebank {__version__}"],
        ),
        slide=Slide(identifier=slide_id, samples=[SlideSample(identifier=f"{slide_id}-sample", uid=generate_uid())]),
        pyramid=Pyramid(image=image, optical_paths=[], uid=generate_uid()),
        label=Label(text=None, barcode=None, contains_phi=False),
        frame_of_reference_uid=generate_uid(),
        dimension_organization_uids=[generate_uid()],
    )


def _profile_tags() -> set[int]:
    tables = dicom_anonymization_database_selector(PROFILE_VERSION)
    tags: set[int] = set()
    for category, entries in tables.items():
        if category == "ALL_TAGS" or category.startswith("U_") or category == "X_Z_U_STAR_TAGS":
            continue  # UIDs are regenerated by the converter; they identify nothing
        for entry in entries:
            if len(entry) == 2:
                tags.add(int(Tag(entry[0], entry[1])))
    return tags


def verify_deidentified(files: Iterable[Path], allowed_values: set[str]) -> None:
    """Refuse the output if a profile attribute holds anything but the values we set ourselves."""
    profile_tags = _profile_tags()
    safe = {int(Tag(k)) for k in SAFE_KEYWORDS}
    allowed = set(allowed_values) | PLACEHOLDER_VALUES
    problems: list[str] = []
    for path in files:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        image_type = set(dataset.get("ImageType", []))
        if image_type & FORBIDDEN_IMAGE_TYPES:
            problems.append(f"{path.name}: stores a {'/'.join(image_type & FORBIDDEN_IMAGE_TYPES)} image")

        def check(ds: Dataset, element: pydicom.DataElement, name: str = path.name) -> None:
            if element.tag.is_private:
                problems.append(f"{name}: private attribute {element.tag}")
                return
            if int(element.tag) not in profile_tags or element.VR == "SQ":
                return
            value = element.value
            if value in (None, "", b"") or int(element.tag) in safe or str(value) in allowed:
                return
            problems.append(f"{name}: {element.keyword or element.tag} = {str(value)[:40]!r}")

        dataset.walk(check)
    if problems:
        raise DeidentificationError("identifying data left in converted slide: " + "; ".join(problems[:10]))
