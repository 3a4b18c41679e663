"""STOW-RS: DICOM instances received over HTTP, stored through the normal ingest pipeline.

Received instances are grouped into slides the way `slidebank ingest` groups a folder of DICOM files
(by series); each slide goes through the same supervised worker as any ingest — validation,
de-identification, conversion to the canonical files, de-duplication, encryption, registration —
so what a PACS sends is stored exactly as what a hospital drops in a folder. The canonical files
carry new UIDs (de-identification regenerates them): each received instance is answered with the
series it now belongs to. A slide that fails leaves nothing behind (the pipeline's guarantee), and
so does every instance of it. Label and overview images are not stored (they carry names).
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

from slidebank.access.principal import Principal
from slidebank.ingest.runner import plan_ingest, run_ingest
from slidebank.node import Node

# PS3.4 table GG.4-1 / PS3.18 failure reasons (FailureReason, 0008,1197)
SOP_CLASS_NOT_SUPPORTED = 0x0122
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH_SOP_CLASS = 0xA900
_NOT_STORED_IMAGE_TYPES = {"LABEL", "OVERVIEW"}


@dataclass(frozen=True)
class StowResult:
    """What became of one received instance."""

    sop_class_uid: str
    sop_instance_uid: str
    stored: bool
    reason: str | None = None  # why not stored (or what to know about how it was)
    failure_code: int | None = None
    slide_id: str | None = None  # the slide it is now part of


@dataclass(frozen=True)
class _Received:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    image_type: frozenset[str]


def store_received(node: Node, parts: list[Path], dataset: str, actor: Principal, *,
                   study_uid: str | None = None) -> list[StowResult]:
    """Ingest the received part files (in `parts`' folder) into `dataset`; one result per part.
    `study_uid` (the `/studies/{uid}` form of STOW-RS) refuses instances of any other study."""
    results: list[StowResult] = []
    by_series: dict[str, list[_Received]] = {}
    for path in parts:
        received = _read(path)
        if isinstance(received, StowResult):
            results.append(received)
        elif study_uid is not None and _study_of(path) != study_uid:
            results.append(StowResult(received.sop_class_uid, received.sop_instance_uid, False,
                                      f"the instance is not of study {study_uid}", DOES_NOT_MATCH_SOP_CLASS))
        elif received.sop_class_uid != VLWholeSlideMicroscopyImageStorage:
            results.append(StowResult(received.sop_class_uid, received.sop_instance_uid, False,
                                      "only VL Whole Slide Microscopy Image Storage instances are stored",
                                      SOP_CLASS_NOT_SUPPORTED))
        elif received.image_type & _NOT_STORED_IMAGE_TYPES:
            results.append(StowResult(received.sop_class_uid, received.sop_instance_uid, False,
                                      "label and overview images are not stored (they may show names)",
                                      SOP_CLASS_NOT_SUPPORTED))
        else:
            by_series.setdefault(received.series_uid, []).append(received)
    root = parts[0].parent if parts else None
    for index, (_, instances) in enumerate(sorted(by_series.items())):
        assert root is not None
        folder = root / f"series-{index}"
        folder.mkdir()
        for instance in instances:
            shutil.move(instance.path, folder / instance.path.name)
        plan = plan_ingest([folder], dataset=dataset)
        outcomes = run_ingest(node, plan, actor=actor) if plan.requests else []
        if len(outcomes) != 1:  # one series is one slide; anything else is not a whole slide image
            reason = f"the series holds {len(outcomes)} slides" if outcomes else "no slide in the series"
            results += [StowResult(i.sop_class_uid, i.sop_instance_uid, False, reason, CANNOT_UNDERSTAND)
                        for i in instances]
            continue
        [outcome] = outcomes
        stored = outcome.status in ("ingested", "duplicate")
        note = "already stored (the same files)" if outcome.status == "duplicate" else outcome.error
        results += [StowResult(i.sop_class_uid, i.sop_instance_uid, stored, note, None if stored else CANNOT_UNDERSTAND,
                               outcome.slide_id if stored else None) for i in instances]
    return results


def _read(path: Path) -> _Received | StowResult:
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        return _Received(path, str(header.SOPClassUID), str(header.SOPInstanceUID), str(header.SeriesInstanceUID),
                         frozenset(str(value) for value in header.get("ImageType", [])))
    except (InvalidDicomError, AttributeError, ValueError, OSError, EOFError) as error:
        return StowResult("", "", False, f"not a DICOM instance: {error}", CANNOT_UNDERSTAND)


def _study_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)


def upload_folder(home: Path) -> Path:
    """A new folder for one request's received parts, named after this process (see `clear_stale_uploads`)."""
    folder = home / "uploads" / f"{os.getpid()}-{secrets.token_hex(8)}"
    folder.mkdir(parents=True, mode=0o700)
    return folder


def clear_stale_uploads(home: Path) -> None:
    """Remove what requests of processes that are gone left (a crash mid-upload): received DICOM is
    plaintext and must not outlive the request that brought it."""
    uploads = home / "uploads"
    if not uploads.is_dir():
        return
    for folder in uploads.iterdir():
        pid = folder.name.partition("-")[0]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
