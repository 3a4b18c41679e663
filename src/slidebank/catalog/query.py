"""The search language: facet filters, free text, and conditions on measured facts (`--where`).

OR within a facet, AND across facets; `text` matches slide id, alias and diagnosis; a condition
reads `qc.blur_fraction < 0.05` or `qc.flags = ''`, several joined by `and`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, select

from slidebank.catalog.errors import CatalogError
from slidebank.catalog.vocabulary import normalise_key
from slidebank.db.models import Image, SlideFact

FACETS: tuple[str, ...] = ("dataset", "species", "organ", "stain", "vendor", "diagnosis")
MAX_FACET_VALUE = 255
CHUNK = 500  # ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
FACT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
FACT_CONDITION = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9_.]+)\s*(?P<op><=|>=|!=|=|<|>)\s*(?P<value>'[^']*'|\"[^\"]*\"|[-+0-9.eE]+)\s*$"
)
FACT_OPERATORS = ("<", "<=", "=", "!=", ">=", ">")


@dataclass(frozen=True)
class FactCondition:
    """One test on a slide-level fact, e.g. `qc.blur_fraction < 0.05` or `qc.flags = ''`."""

    name: str
    op: str
    value: float | str

    @classmethod
    def parse_all(cls, text: str) -> tuple[FactCondition, ...]:
        """Conditions joined by `and`; CatalogError with the offending part when one is malformed."""
        conditions = []
        for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
            match = FACT_CONDITION.match(part)
            if not match or not FACT_NAME.match(match["name"]):
                raise CatalogError(f"cannot read condition {part!r}; write e.g. qc.blur_fraction < 0.05")
            raw = match["value"]
            if raw[0] in "'\"":
                if match["op"] not in ("=", "!="):
                    raise CatalogError(f"text can only be compared with = or != in {part!r}")
                value: float | str = raw[1:-1]
            else:
                try:
                    value = float(raw)
                    if not math.isfinite(value):
                        raise ValueError(raw)
                except ValueError:
                    raise CatalogError(f"{raw!r} is not a number in {part!r}") from None
            conditions.append(cls(match["name"], match["op"], value))
        return tuple(conditions)

    def clause(self) -> ColumnElement[bool]:
        column = SlideFact.text if isinstance(self.value, str) else SlideFact.value
        test = {
            "<": column < self.value, "<=": column <= self.value, "=": column == self.value,
            "!=": column != self.value, ">=": column >= self.value, ">": column > self.value,
        }[self.op]
        return Image.id.in_(select(SlideFact.image_id).where(SlideFact.name == self.name, test))


@dataclass(frozen=True)
class SearchQuery:
    """Faceted search: OR within a facet, AND across facets; `text` matches id, alias and diagnosis.

    `visible_datasets`, when given, restricts everything — items, total and facet counts — to
    those datasets, so that counts never reveal what a caller may not see.
    """

    dataset: Sequence[str] | None = None
    species: Sequence[str] | None = None
    organ: Sequence[str] | None = None
    stain: Sequence[str] | None = None
    vendor: Sequence[str] | None = None
    diagnosis: Sequence[str] | None = None
    text: str | None = None
    where: Sequence[FactCondition] = ()
    limit: int = 50
    offset: int = 0
    after: str | None = None  # a `SearchResult.next` cursor: the page after it (ignores offset)
    facet_limit: int | None = None  # the most values listed per facet (the most frequent); None: all
    visible_datasets: Sequence[str] | None = None

    def facet_values(self, facet: str) -> list[str]:
        """The filter values of one facet; a bare string counts as one value, not as characters."""
        values = getattr(self, facet)
        if values is None:
            return []
        return [values] if isinstance(values, str) else [str(v) for v in values]


@dataclass(frozen=True)
class SearchResult:
    """One page of matching images, the total match count, and (value, count) pairs per facet.

    `facet_values` says how many values each facet has in all (more than listed when the query
    set `facet_limit`); `datasets` is every dataset's count, listed or not (for the audit); `next`
    is the cursor of the following page, None on the last.
    """

    total: int
    items: list[dict[str, Any]]
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    facet_values: dict[str, int] = field(default_factory=dict)
    datasets: dict[str, int] = field(default_factory=dict)
    next: str | None = None



def chunks(values: Sequence[int], size: int = CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def facet_key(value: str) -> str:
    return normalise_key(value)[:MAX_FACET_VALUE]
