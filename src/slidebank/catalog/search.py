"""Faceted search at image level over the search index, and listing of slide summaries.

Each facet's counts are computed with every *other* facet's filter applied (bitmap intersections,
`catalog.search_index`); `visible_datasets` restricts items, totals and counts alike, so counts
never reveal what a caller may not see. Pages follow keyset cursors (or offsets, which a bitmap
answers as fast), and only the page's rows are read from the database.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pyroaring import BitMap
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from slidebank.catalog.errors import CatalogError
from slidebank.catalog.query import CHUNK, FACETS, SearchQuery, SearchResult, chunks, facet_key
from slidebank.catalog.search_index import SearchIndex
from slidebank.catalog.vocabulary import ANATOMICAL_SITES, SPECIES, STAINS, Vocabulary, clean_text, normalise_key
from slidebank.db.models import Dataset, Image, ImageFacet
from slidebank.db.models.base import iso_utc

SUMMARY_FACETS: tuple[str, ...] = ("species", "organ", "stain", "diagnosis")
FACET_VOCABULARIES: dict[str, Vocabulary] = {"species": SPECIES, "organ": ANATOMICAL_SITES, "stain": STAINS}
MAX_LIMIT = 10_000
CURSOR = re.compile(r"i[0-9a-f]{1,16}")


def list_slides(session: Session) -> list[dict[str, Any]]:
    """A summary of every image, in ingest order."""
    items: list[dict[str, Any]] = []
    last_id = 0
    while True:  # keyset pagination: constant memory per batch, no OFFSET scans
        rows = session.execute(
            summary_select().where(Image.id > last_id).order_by(Image.id).limit(CHUNK)
        ).all()
        if not rows:
            return items
        items.extend(summaries(session, rows))
        last_id = rows[-1].id


def search(session: Session, query: SearchQuery, index: SearchIndex) -> SearchResult:
    """Faceted search at image level; see `SearchQuery`. Set algebra on the process's bitmaps,
    brought to the catalog's current version first; then one indexed read for the page."""
    limit = max(0, min(int(query.limit), MAX_LIMIT))
    with index.lock:
        index.sync(session)
        base, restricted = _common(query, index)
        filters = {name: index.facet_union(name, keys) for name, keys in _facet_keys(query).items()}
        matches = BitMap.intersection(base, *filters.values()) if filters else BitMap(base)
        start = matches.rank(_cursor_id(query.after)) if query.after else max(0, int(query.offset))
        page = list(matches[start : start + limit]) if start < len(matches) else []
        facets: dict[str, list[tuple[str, int]]] = {}
        facet_values: dict[str, int] = {}
        for name in FACETS:
            others = [bitmap for facet, bitmap in filters.items() if facet != name]
            within = BitMap.intersection(base, *others) if others else (base if restricted else None)
            facets[name], facet_values[name] = index.counts(name, within, None if name == "dataset" else query.facet_limit)
    rows = session.execute(summary_select().where(Image.id.in_(page)).order_by(Image.id)).all() if page else []
    following = _cursor(page[-1]) if page and start + len(page) < len(matches) else None
    datasets = facets["dataset"]
    if query.facet_limit is not None:  # every dataset's count stays known to the audit
        facets["dataset"] = datasets[: query.facet_limit]
    return SearchResult(total=len(matches), items=summaries(session, rows), next=following, facets=facets,
                        facet_values=facet_values, datasets=dict(datasets))


def _common(query: SearchQuery, index: SearchIndex) -> tuple[BitMap, bool]:
    """The images every part of the answer is restricted to (access, `where`, text), and whether
    anything restricted them."""
    base = BitMap(index.images)
    restricted = False
    if query.visible_datasets is not None:
        base &= index.facet_union("dataset", {facet_key(clean_text(name)) for name in query.visible_datasets})
        restricted = True
    for condition in query.where:
        base &= index.condition(condition)
        restricted = True
    text = clean_text(query.text or "")
    if text:
        base &= index.text(text, normalise_key(text))
        restricted = True
    return base, restricted


def _facet_keys(query: SearchQuery) -> dict[str, set[str]]:
    """The index keys each facet filter names (a facet whose values are all blank filters nothing)."""
    filters: dict[str, set[str]] = {}
    for name in FACETS:
        vocabulary = FACET_VOCABULARIES.get(name)
        keys = {
            facet_key(vocabulary.display_name(value) if vocabulary else clean_text(value))
            for value in query.facet_values(name)
            if clean_text(value)
        }
        keys.discard("")
        if keys:
            filters[name] = keys
    return filters


def _cursor(image_id: int) -> str:
    """An opaque keyset cursor: the next page starts after this image, however deep."""
    return f"i{image_id:x}"


def _cursor_id(cursor: str) -> int:
    if not CURSOR.fullmatch(cursor):
        raise CatalogError(f"{cursor!r} is not a cursor this search returned")
    return int(cursor[1:], 16)


def summary_select() -> Select[int, str, str, int, int, str, datetime]:
    return select(
        Image.id,
        Image.slide_id,
        Dataset.alias.label("dataset"),
        Image.width,
        Image.height,
        Image.vendor,
        Image.ingested_at,
    ).join(Dataset, Dataset.id == Image.dataset_id)


def _facet_strings(session: Session, image_ids: Sequence[int]) -> dict[int, dict[str, str]]:
    """ "; "-joined facet values per image, read from the facet index for just these images."""
    values: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for chunk in chunks(list(image_ids)):
        statement = (
            select(ImageFacet.image_id, ImageFacet.facet, ImageFacet.value)
            .where(ImageFacet.image_id.in_(chunk), ImageFacet.facet.in_(SUMMARY_FACETS))
            .order_by(ImageFacet.image_id, ImageFacet.facet, ImageFacet.key)
        )
        for image_id, facet, value in session.execute(statement):
            values[image_id][facet].append(value)
    return {image_id: {f: "; ".join(v) for f, v in facets.items()} for image_id, facets in values.items()}


def summaries(session: Session, rows: Sequence[Any]) -> list[dict[str, Any]]:
    strings = _facet_strings(session, [row.id for row in rows])
    return [
        {
            "slide_id": row.slide_id,
            "dataset": row.dataset,
            "width": row.width,
            "height": row.height,
            "vendor": row.vendor,
            "stain": strings.get(row.id, {}).get("stain"),
            "species": strings.get(row.id, {}).get("species"),
            "organ": strings.get(row.id, {}).get("organ"),
            "diagnosis": strings.get(row.id, {}).get("diagnosis"),
            "ingested_at": iso_utc(row.ingested_at),
        }
        for row in rows
    ]
