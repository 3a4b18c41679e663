"""Finding slides among the files a submitter hands us.

A "source slide" is what a pathologist calls one slide, even when it is many files: an MRXS index
with its data folder, or the instances of one DICOM WSI series. Discovery never follows symbolic
links (a folder of slides must not smuggle in `/etc/shadow`) and ignores files that are plainly not
slides (sidecars, checksums, READMEs) when walking folders; a file named explicitly is always tried,
so that it is refused with a reason rather than silently skipped.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom

SLIDE_SUFFIXES = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide", ".dcm", ".btf"}
)


@dataclass(frozen=True)
class SourceSlide:
    """One slide as submitted: its main path, every file it consists of, and how to read it."""

    path: Path
    files: tuple[Path, ...]
    kind: str  # "dicom" or "file" (anything OpenSlide/tifffile may read)

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @property
    def display_name(self) -> str:
        return str(self.path)


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble, whatever their name."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _mrxs_files(index: Path) -> tuple[Path, ...]:
    data_dir = index.with_suffix("")
    files = [index]
    if data_dir.is_dir():
        files.extend(sorted(p for p in data_dir.rglob("*") if p.is_file() and not p.is_symlink()))
    return tuple(files)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if not name.startswith(".") and not path.is_symlink() and path.is_file():
                yield path


def _dicom_series_key(path: Path) -> str:
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        return str(dataset.get("SeriesInstanceUID", path))
    except Exception:  # noqa: BLE001 - unreadable DICOM: keep it alone so validation reports it
        return str(path)


def discover(inputs: Iterable[Path]) -> tuple[list[SourceSlide], list[Path]]:
    """Group input files and folders into source slides; return (slides, ignored files).

    Raises FileNotFoundError for an input that does not exist, before anything is ingested.
    """
    explicit: list[Path] = []
    walked: list[Path] = []
    ignored: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_dir():
            walked.extend(_walk(path))
        else:
            explicit.append(path)

    slides: list[SourceSlide] = []
    claimed: set[Path] = set()
    candidates = explicit + [p for p in walked if p.suffix.lower() in SLIDE_SUFFIXES or is_dicom_file(p)]
    candidate_set = set(candidates)
    ignored.extend(p for p in walked if p not in candidate_set)

    for path in candidates:
        if path.suffix.lower() == ".mrxs":
            files = _mrxs_files(path)
            claimed.update(files[1:])
    dicom_groups: dict[str, list[Path]] = defaultdict(list)
    for path in candidates:
        if path in claimed:
            continue
        if path.suffix.lower() == ".mrxs":
            slides.append(SourceSlide(path, _mrxs_files(path), "file"))
        elif is_dicom_file(path):
            dicom_groups[_dicom_series_key(path)].append(path)
        else:
            slides.append(SourceSlide(path, (path,), "file"))
    for group in dicom_groups.values():
        ordered = tuple(sorted(set(group)))
        slides.append(SourceSlide(ordered[0], ordered, "dicom"))
    return slides, ignored
