"""QIDO-RS: studies, series and instances matching a query, among what the caller may read.

Matching follows PS3.4 C.2.2.2: single values, UID lists (`,` or `\\`), `*`/`?` wildcards, date and
time ranges (`A-B`, `-B`, `A-`), and case-insensitive person names with `fuzzymatching=true`. Keys
of a lower level than the search, computed attributes and unknown keys do not narrow the answer: the
route says so in a `Warning` header (PS3.18 8.3.4.1). Everything is one SQL query per level over the
instance index, joined to the image's dataset so that results and counts hold only readable data.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, distinct, false, func, or_, select
from sqlalchemy.orm import Session

from slidebank.db.models import Dataset, DicomInstance, Image
from slidebank.dicomweb.attributes import (
    ATTRIBUTES,
    BY_KEYWORD,
    DEFAULTS,
    Attribute,
    Level,
    at_or_above,
    attribute,
    element,
)

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000
RESERVED = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


class QueryError(ValueError):
    """A query QIDO-RS refuses (400): a malformed value, limit or offset."""


@dataclass(frozen=True)
class Query:
    level: Level
    matches: tuple[tuple[Attribute, tuple[str, ...]], ...] = ()  # any of the values; all of the attributes
    include: frozenset[str] = frozenset()
    include_all: bool = False
    fuzzy: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    ignored: tuple[str, ...] = ()  # parameters that did not narrow the search (for the Warning header)


@dataclass
class Answer:
    results: list[dict[str, Any]] = field(default_factory=list)
    per_dataset: Counter[str] = field(default_factory=Counter)  # results per dataset, for the audit


def parse(level: Level, parameters: list[tuple[str, str]], scope: dict[str, str]) -> Query:
    """A query from the request's parameters; `scope` holds the UIDs of the path (study, series)."""
    allowed = at_or_above(level)
    matches: dict[str, tuple[Attribute, list[str]]] = {}  # a key repeated: any of its values
    include: set[str] = set()
    include_all = fuzzy = False
    limit, offset = DEFAULT_LIMIT, 0
    ignored: list[str] = []
    for name, value in parameters:
        if name == "includefield":
            for item in (part.strip() for part in value.split(",")):
                if item == "all":
                    include_all = True
                elif (known := attribute(item)) is not None:
                    include.add(known.keyword)
                elif item:
                    ignored.append(f"includefield={item}")
        elif name == "limit":
            limit = _bounded(name, value, 1, MAX_LIMIT)
        elif name == "offset":
            offset = _bounded(name, value, 0, 10**9)
        elif name == "fuzzymatching":
            fuzzy = value.lower() == "true"
        else:
            known = attribute(name)
            if known is None or known.keyword not in allowed or (known.column is None
                                                                  and known.keyword != "ModalitiesInStudy"):
                ignored.append(name)
            elif value != "":
                _check(known, value)
                matches.setdefault(known.keyword, (known, []))[1].append(value)
                include.add(known.keyword)
    found = [(known, tuple(values)) for known, values in matches.values()]
    found += [(BY_KEYWORD[keyword], (uid,)) for keyword, uid in scope.items()]  # the path's UIDs, besides
    return Query(level, tuple(found), frozenset(include), include_all, fuzzy, limit, offset, tuple(ignored))


def _bounded(name: str, value: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise QueryError(f"{name} must be an integer from {low} to {high}")
    return int(value)


def _check(known: Attribute, value: str) -> None:
    """Refuse values that cannot be matched as the attribute's VR says (a 400 says why)."""
    if known.kind in ("date", "time"):
        pattern = _DATE if known.kind == "date" else _TIME
        start, dash, end = value.partition("-")
        if not all(pattern.match(part) for part in (start, end) if part) or (dash and not (start or end)) or (
                not dash and not pattern.match(start)):
            raise QueryError(f"{known.keyword}: {value!r} is not a {known.kind} or a range of them")
    elif known.kind == "number" and not all(part.strip().isdigit() for part in value.split(",")):
        raise QueryError(f"{known.keyword}: {value!r} is not an integer")


def _values(value: str) -> list[str]:
    return [part for part in re.split(r"[,\\]", value) if part]


def _condition(known: Attribute, value: str, fuzzy: bool) -> ColumnElement[bool]:
    if known.keyword == "ModalitiesInStudy":
        return DicomInstance.study_uid.in_(
            select(DicomInstance.study_uid).where(DicomInstance.modality.in_(_values(value))))
    column = _indexed(known)
    if known.kind == "uid":
        return column.in_(_values(value))
    if known.kind == "number":
        return column.in_([int(part) for part in value.split(",")])
    if known.kind in ("date", "time"):
        start, dash, end = value.partition("-")
        if not dash:
            return column == start if known.kind == "date" else column.like(f"{start}%")
        conditions = [column != ""]
        if start:
            conditions.append(column >= start)
        if end:
            conditions.append(column <= end + ("" if known.kind == "date" else "\x7f"))
        return and_(*conditions)
    if known.keyword == "ImageType":  # multi-valued: any value may match
        return or_(*(column.like(f"%{part}%") for part in _values(value)))
    if "*" in value or "?" in value or (known.kind == "name" and fuzzy):
        pattern = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = pattern.replace("*", "%").replace("?", "_")
        if known.kind == "name" and fuzzy:  # case-insensitive, and any name component may start the match
            return or_(func.lower(column).like(func.lower(pattern + ("" if "*" in value else "%")), escape="\\"),
                       func.lower(column).like(func.lower("%^" + pattern + "%"), escape="\\"))
        return column.like(pattern, escape="\\")
    return column == value


def _indexed(known: Attribute) -> Any:
    """The index column of an attribute that has one."""
    assert known.column is not None, known.keyword
    return getattr(DicomInstance, known.column)


def _filtered(query: Query, readable: frozenset[str] | None) -> list[ColumnElement[bool]]:
    conditions = [or_(*(_condition(known, value, query.fuzzy) for value in values)) for known, values in query.matches]
    if readable is not None:
        conditions.append(Dataset.alias.in_(sorted(readable)) if readable else false())
    return conditions


def _joined(statement: Select) -> Select:
    return statement.join(Image, Image.id == DicomInstance.image_id).join(Dataset, Dataset.id == Image.dataset_id)


def search(session: Session, query: Query, readable: frozenset[str] | None) -> Answer:
    """The page of matches at the query's level, as DICOM JSON objects."""
    conditions = _filtered(query, readable)
    wanted = _returned(query)
    if query.level == "instance":
        found = session.execute(
            _joined(select(DicomInstance, Dataset.alias)).where(*conditions)
            .order_by(DicomInstance.study_uid, DicomInstance.series_uid, DicomInstance.instance_number,
                      DicomInstance.sop_instance_uid)
            .limit(query.limit).offset(query.offset)
        ).all()
        answer = Answer()
        for instance, dataset in found:
            answer.per_dataset[dataset] += 1
            computed = {"AvailableTransferSyntaxUID": [instance.transfer_syntax]}
            answer.results.append(_json(wanted, lambda a, row=instance: _column(row, a), computed))
        return answer
    keys = [DicomInstance.study_uid] if query.level == "study" else [DicomInstance.study_uid, DicomInstance.series_uid]
    columns = [a for a in ATTRIBUTES if a.column and a.level in (("study",) if query.level == "study"
                                                                  else ("study", "series"))]
    grouped = _joined(select(
        *(func.max(_indexed(a)).label(a.keyword) for a in columns),
        func.count(distinct(DicomInstance.series_uid)).label("series"),
        func.count(DicomInstance.id).label("instances"),
        func.min(Dataset.alias).label("dataset"),
    )).where(*conditions).group_by(*keys).order_by(*keys).limit(query.limit).offset(query.offset)
    rows = session.execute(grouped).all()
    modalities: dict[str, set[str]] = defaultdict(set)
    if query.level == "study" and rows and any(a.keyword == "ModalitiesInStudy" for a in wanted):
        studies = [row.StudyInstanceUID for row in rows]
        for study, modality in session.execute(_joined(
            select(DicomInstance.study_uid, DicomInstance.modality).distinct())
                .where(DicomInstance.study_uid.in_(studies), *_filtered(Query("study"), readable))):
            modalities[study].add(modality)
    answer = Answer()
    for row in rows:
        answer.per_dataset[row.dataset] += 1
        computed = {
            "ModalitiesInStudy": sorted(modalities[row.StudyInstanceUID]),
            "NumberOfStudyRelatedSeries": [row.series], "NumberOfStudyRelatedInstances": [row.instances],
            "NumberOfSeriesRelatedInstances": [row.instances], "ReferringPhysicianName": [],
        }
        answer.results.append(_json(wanted, lambda a, r=row: getattr(r, a.keyword, None), computed))
    return answer


def _returned(query: Query) -> list[Attribute]:
    allowed = at_or_above(query.level)
    names = allowed if query.include_all else (set(DEFAULTS[query.level]) | query.include) & allowed
    return [a for a in ATTRIBUTES if a.keyword in names]


def _column(row: DicomInstance, known: Attribute) -> Any:
    return getattr(row, known.column) if known.column else None


def _json(wanted: list[Attribute], value_of: Any, computed: dict[str, list[Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for known in wanted:
        if known.column is None:
            values = computed.get(known.keyword, [])
        else:
            value = value_of(known)
            values = str(value).split("\\") if known.keyword == "ImageType" and value else [value]
        tag, encoded = element(known.keyword, values)
        result[tag] = encoded
    return dict(sorted(result.items()))
