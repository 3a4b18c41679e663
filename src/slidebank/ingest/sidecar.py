"""Sidecar metadata: a CSV or JSON file that says what each submitted slide is.

One row per slide, keyed by the `file` it describes (as given on the ingest command line: a path
relative to the input folder, or just a base name; an `.mrxs` file or a DICOM folder names that
whole slide). Other columns are `SlideDescription` fields, with friendly synonyms (`organ`,
`staining`, `diagnose`, `patient`…). `mpp` is the pixel size in µm per level-0 pixel, for slides
whose file does not say (a decimal comma, as spreadsheets in many locales write it, is accepted).

A sidecar is validated completely before anything is ingested, and every problem is reported at
once with the line a person sees in an editor (the header is line 1 of a CSV; JSON items are
reported by index and line), so a submitter fixes the file in one pass instead of one error per run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from slidebank.catalog.identifiers import SLIDE_ID_PATTERN
from slidebank.catalog.records import SlideDescription
from slidebank.catalog.vocabulary import SEX, UnknownTermError, valid_age

DESCRIPTION_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SlideDescription) if f.name != "sample_aliases")

# Column names people write → SlideDescription field (or "file"). Headers are compared lower-case,
# with spaces and hyphens read as underscores.
COLUMN_SYNONYMS: dict[str, str] = {
    **{name: name for name in DESCRIPTION_FIELDS},
    "file": "file",
    "filename": "file",
    "file_name": "file",
    "path": "file",
    "organ": "anatomical_site",
    "site": "anatomical_site",
    "stain": "stain",
    "staining": "stain",
    "stains": "stain",
    "diagnose": "diagnosis",
    "animal_species": "species",
    "subject_id": "subject",
    "patient": "subject",
    "patient_id": "subject",
    "animal": "subject",
    "animal_id": "subject",
    "biological_being": "subject",
    "age": "age_at_extraction",
    "case_id": "case",
    "specimen_id": "specimen",
    "fixation": "fixation_type",
    "fixative": "fixation_type",
    "block_id": "block",
    "embedding": "block_preparation",
    "slide_label": "slide",
    "slideid": "slide_id",
    "microns_per_pixel": "mpp",
    "um_per_pixel": "mpp",
    "µm_per_pixel": "mpp",
    "um/px": "mpp",
    "µm/px": "mpp",
    "pixel_size_um": "mpp",
    "pixel_size_µm": "mpp",
}
# Pixel sizes a slide can have, in µm per pixel: from a 200× oil objective to a low-power overview.
MPP_RANGE = (0.05, 100.0)
MAX_VALUE = 255
MAX_LONG_VALUE = 4000  # free-text diagnoses may be long
LONG_FIELDS = frozenset({"diagnosis"})
MAX_REPORTED = 200
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
DICOM_LIKE_SUFFIXES = frozenset({".dcm", ".dicom", ""})


def parse_mpp(value: str | float) -> float:
    """A pixel size in µm/px from text or a number; ValueError saying what is wrong otherwise."""
    text = str(value).strip()
    if text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")
    try:
        mpp = float(text)
    except ValueError:
        raise ValueError(f"mpp {str(value)!r} is not a number (µm per pixel, e.g. 0.25)") from None
    low, high = MPP_RANGE
    if not math.isfinite(mpp) or not low <= mpp <= high:
        raise ValueError(f"mpp {str(value)!r} is not a pixel size: give µm per pixel between {low:g} and {high:g} "
                         "(e.g. 0.25 for a 40× scan)")
    return mpp


class SidecarError(ValueError):
    """The sidecar is unusable; `problems` lists every one, each with its line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"… and {len(problems) - MAX_REPORTED} more problems")
        super().__init__("\n".join(shown))


@dataclass(frozen=True)
class SidecarRow:
    """One described slide: where it is in the sidecar, which file it names, what it says."""

    line: int
    location: str  # "line 4" (CSV) or "[2] (line 12)" / "slides[2] (line 12)" (JSON)
    file: str
    description: SlideDescription


class Sidecar:
    """A validated sidecar, answering "what does it say about this slide?"."""

    def __init__(self, path: Path, rows: Iterable[SidecarRow]) -> None:
        self.path = path
        self.rows: tuple[SidecarRow, ...] = tuple(rows)
        self._by_file: dict[str, SidecarRow] = {row.file: row for row in self.rows}
        self._by_name: dict[str, list[SidecarRow]] = defaultdict(list)
        for row in self.rows:
            self._by_name[posixpath.basename(row.file)].append(row)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(row.file for row in self.rows)

    def description_for(self, path: Path, input_root: Path | None) -> SlideDescription | None:
        """What the sidecar says about the slide at `path` (found under `input_root`, if a folder)."""
        row = self.row_for(path, input_root)
        return row.description if row else None

    def row_for(self, path: Path, input_root: Path | None) -> SidecarRow | None:
        """Exact relative path first, then base name; a DICOM file also answers to its folder.

        A base name that several rows share is ambiguous, and an error rather than a guess.
        """
        path = Path(path)
        exact = [*self._relative_forms(path, input_root)]
        names = [path.name]
        if path.suffix.lower() == ".mrxs":  # the index file or its data folder names the slide
            exact += self._relative_forms(path.with_suffix(""), input_root)
            names.append(path.stem)
        if path.suffix.lower() in DICOM_LIKE_SUFFIXES:  # one series is one folder
            exact += self._relative_forms(path.parent, input_root)
            names.append(path.parent.name)
        for key in exact:
            if key in self._by_file:
                return self._by_file[key]
        for name in names:
            matches = self._by_name.get(name, [])
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                where = ", ".join(f"{m.location} ({m.file!r})" for m in matches)
                raise SidecarError([f"{self.path.name}: {name!r} matches several rows: {where}; use relative paths"])
        return None

    def _relative_forms(self, path: Path, input_root: Path | None) -> Iterator[str]:
        """`path` relative to the input folder, to the sidecar's folder, as given and absolute."""
        for base in (input_root, self.path.parent):
            if base is None:
                continue
            try:
                relative = path.resolve().relative_to(Path(base).resolve()).as_posix()
            except (ValueError, OSError):
                continue
            if relative != ".":
                yield relative
        yield normalise_file(path.as_posix())
        yield path.resolve().as_posix()


def normalise_file(value: str) -> str:
    """How `file` values compare: '/' separators, no './', no trailing '/'."""
    text = value.strip().replace("\\", "/")
    if not text:
        return ""
    normal = posixpath.normpath(text)
    return "" if normal == "." else normal


def load_sidecar(path: Path) -> Sidecar:
    """Read and validate a CSV (header row) or JSON (list, or {"slides": [...]}) sidecar."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SidecarError([f"{path}: cannot read the sidecar ({error.strerror or error})"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise SidecarError([f"{path.name} line {line}: not UTF-8 text; save the file as UTF-8"]) from None
    is_json = path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{"))
    records, problems = _json_records(path, text) if is_json else _csv_records(path, text)
    return _validate(path, records, problems)


@dataclass(frozen=True)
class _Record:
    line: int
    location: str
    values: dict[str, Any]  # description field (or "file") → raw value


def _csv_records(path: Path, text: str) -> tuple[list[_Record], list[str]]:
    delimiter = _delimiter(path, text.split("\n", 1)[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    problems: list[str] = []
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise SidecarError([f"{path.name} line 1: {error}"]) from None
    if not header or not any(cell.strip() for cell in header):
        raise SidecarError([f"{path.name} line 1: expected a header row naming the columns (file, …)"])
    columns = _columns(path, [(h, "line 1") for h in header], problems, require_file=True)
    records: list[_Record] = []
    line = reader.line_num + 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1  # a quoted value may span lines: report the first
            if not any(cell.strip() for cell in cells):
                continue  # blank lines are fine
            if len(cells) > len(header):
                problems.append(
                    f"{path.name} line {start}: {len(cells)} values but the header names {len(header)} columns"
                )
                continue
            values = {field: cells[index] for index, field in columns.items() if index < len(cells)}
            records.append(_Record(start, f"line {start}", values))
    except csv.Error as error:
        problems.append(f"{path.name} line {line}: {error}")
    return records, problems


def _delimiter(path: Path, header: str) -> str:
    """Comma by default; a tab (.tsv) or semicolon (European spreadsheets) when the header uses it."""
    if path.suffix.lower() == ".tsv" or ("\t" in header and "," not in header):
        return "\t"
    if ";" in header and "," not in header:
        return ";"
    return ","


def _columns(
    path: Path, headers: list[tuple[str, str]], problems: list[str], *, require_file: bool = False
) -> dict[int, str]:
    """Map header positions to fields; unknown, repeated or missing columns are problems."""
    mapping: dict[int, str] = {}
    seen: dict[str, str] = {}
    for index, (header, location) in enumerate(headers):
        name = re.sub(r"[\s\-]+", "_", header.strip().lower())
        if not name:
            if header.strip() == "" and index == len(headers) - 1:
                continue  # a trailing delimiter
            problems.append(f"{path.name} {location}: column {index + 1} has no name")
            continue
        field = COLUMN_SYNONYMS.get(name)
        if field is None:
            known = ", ".join(("file", *DESCRIPTION_FIELDS))
            problems.append(f"{path.name} {location}: unknown column {header.strip()!r}; known columns: {known}")
            continue
        if field in seen:
            problems.append(f"{path.name} {location}: columns {seen[field]!r} and {header.strip()!r} both give {field}")
            continue
        seen[field] = header.strip()
        mapping[index] = field
    if require_file and "file" not in seen:
        problems.insert(0, f"{path.name} line 1: no 'file' column naming each slide's file or folder")
    return mapping


def _json_records(path: Path, text: str) -> tuple[list[_Record], list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SidecarError([f"{path.name} line {error.lineno}: invalid JSON: {error.msg}"]) from None
    prefix = ""
    if isinstance(data, dict):
        extra = sorted(set(data) - {"slides"})
        if "slides" not in data or extra:
            detail = f"unknown keys {', '.join(map(repr, extra))}" if extra else "no 'slides' list"
            raise SidecarError([f'{path.name} line 1: expected a list of slides or {{"slides": [...]}} ({detail})'])
        items, prefix = data["slides"], "slides"
    else:
        items = data
    if not isinstance(items, list):
        raise SidecarError([f"{path.name} line 1: expected a list of slides"])
    lines = _json_item_lines(text, isinstance(data, dict), len(items))
    problems: list[str] = []
    records: list[_Record] = []
    for index, item in enumerate(items):
        line = lines[index]
        location = f"{prefix}[{index}] (line {line})"
        if not isinstance(item, dict):
            problems.append(f"{path.name} {location}: expected an object with a 'file' key")
            continue
        columns = _columns(path, [(str(key), location) for key in item], problems)
        keys = list(item)
        values: dict[str, Any] = {}
        for position, field in columns.items():
            value = item[keys[position]]
            if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
                problems.append(f"{path.name} {location}: {keys[position]!r} must be text")
                continue
            values[field] = None if value is None else str(value)
        records.append(_Record(line, location, values))
    return records, problems


def _json_item_lines(text: str, wrapped: bool, count: int) -> list[int]:
    """The line each item of the slides array starts on (1 for all if the layout defeats us)."""
    decoder = json.JSONDecoder()
    blank = re.compile(r"[ \t\n\r]*")

    def skip(position: int) -> int:
        match = blank.match(text, position)
        return match.end() if match else position

    try:
        position = skip(0)
        if wrapped:  # walk {"key": value, ...} to the "slides" value
            position = skip(position + 1)
            start = None
            while text[position] != "}":
                key, position = decoder.raw_decode(text, position)
                position = skip(skip(position) + 1)  # past ':'
                if key == "slides":
                    start = position
                _, position = decoder.raw_decode(text, position)
                position = skip(position)
                if text[position] == ",":
                    position = skip(position + 1)
            assert start is not None
            position = start
        position = skip(position + 1)  # past '['
        lines: list[int] = []
        line, counted = 1, 0
        while text[position] != "]":
            line += text.count("\n", counted, position)
            counted = position
            lines.append(line)
            _, position = decoder.raw_decode(text, position)
            position = skip(position)
            if text[position] == ",":
                position = skip(position + 1)
        if len(lines) == count:
            return lines
    except (ValueError, IndexError, AssertionError):
        pass
    return [1] * count


def _line_of(message: str) -> int:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else 0


def _validate(path: Path, records: list[_Record], structural: list[str]) -> Sidecar:
    """Check every record; raise one SidecarError listing these and the structural problems by line."""
    problems: list[tuple[int, str]] = [(_line_of(message), message) for message in structural]
    rows: list[SidecarRow] = []
    first_file: dict[str, str] = {}
    first_slide_id: dict[str, str] = {}

    def problem(record: _Record, message: str) -> None:
        problems.append((record.line, f"{path.name} {record.location}: {message}"))

    for record in records:
        values: dict[str, Any] = {}  # description field -> text (or None)
        valid = True
        for field, raw in record.values.items():
            value = None if raw is None else str(raw).strip()
            if not value:
                values[field] = None
                continue
            limit = MAX_LONG_VALUE if field in LONG_FIELDS else MAX_VALUE
            if len(value) > limit:
                problem(record, f"{field} is too long ({len(value)} characters; at most {limit})")
                valid = False
            elif CONTROL_CHARACTERS.search(value):
                problem(record, f"{field} contains control characters")
                valid = False
            values[field] = value

        file = normalise_file(values.pop("file", None) or "")
        if not file:
            problem(record, "no file named; every row needs the slide's file or folder name")
            valid = False
        elif file in first_file:
            problem(record, f"duplicate file {file!r} (first on {first_file[file]})")
            valid = False
        else:
            first_file[file] = record.location

        sex = values.get("sex")
        if sex:
            try:
                SEX.normalise(sex, strict=True)
            except UnknownTermError as error:
                problem(record, str(error))
                valid = False
        age = values.get("age_at_extraction")
        if age and not valid_age(age):
            problem(record, f"age_at_extraction {age!r} is not an ISO 8601 duration such as P54Y, P10W or P3M")
            valid = False
        slide_id = values.get("slide_id")
        if slide_id:
            if not SLIDE_ID_PATTERN.fullmatch(slide_id):
                problem(
                    record,
                    f"slide_id {slide_id!r} is not a valid identifier "
                    "(1–64 letters, digits, '.', '_' or '-', starting with a letter or digit)",
                )
                valid = False
            elif slide_id in first_slide_id:
                problem(record, f"duplicate slide_id {slide_id!r} (first on {first_slide_id[slide_id]})")
                valid = False
            else:
                first_slide_id[slide_id] = record.location
        mpp_text = values.pop("mpp", None)
        mpp: float | None = None
        if mpp_text:
            try:
                mpp = parse_mpp(mpp_text)
            except ValueError as error:
                problem(record, str(error))
                valid = False
        if valid:
            rows.append(SidecarRow(record.line, record.location, file, SlideDescription(**values, mpp=mpp)))

    if problems:
        raise SidecarError([message for _, message in sorted(problems, key=lambda p: p[0])])
    return Sidecar(path, rows)


__all__ = ["COLUMN_SYNONYMS", "MPP_RANGE", "Sidecar", "SidecarError", "SidecarRow", "load_sidecar", "normalise_file",
           "parse_mpp"]
