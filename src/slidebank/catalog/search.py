"""Faceted search at image level over the facet index, and listing of slide summaries.

Each facet's counts are computed with every *other* facet's filter applied, all by GROUP BY in
SQL; `visible_datasets` restricts items, totals and counts alike, so counts never reveal what a
caller may not see.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from slidebank.catalog.query import CHUNK, FACETS, SearchQuery, SearchResult, chunks, facet_key
from slidebank.catalog.vocabulary import ANATOMICAL_SITES, SPECIES, STAINS, Vocabulary, clean_text, normalise_key
from slidebank.db.models import Dataset, Image, ImageFacet
from slidebank.db.models.base import iso_utc

SUMMARY_FACETS: tuple[str, ...] = ("species", "organ", "stain", "diagnosis")
FACET_VOCABULARIES: dict[str, Vocabulary] = {"species": SPECIES, "organ": ANATOMICAL_SITES, "stain": STAINS}
MAX_LIMIT = 10_000


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


def search(session: Session, query: SearchQuery) -> SearchResult:
    """Faceted search at image level; see `SearchQuery`."""
    filters = _facet_filters(query)
    common = _common_conditions(query)
    conditions = [*common, *filters.values()]
    limit = max(0, min(int(query.limit), MAX_LIMIT))
    offset = max(0, int(query.offset))
    total = session.scalar(select(func.count()).select_from(Image).where(*conditions)) or 0
    rows = session.execute(
        summary_select().where(*conditions).order_by(Image.id).limit(limit).offset(offset)
    ).all()
    items = summaries(session, rows)
    facets: dict[str, list[tuple[str, int]]] = {}
    for name in FACETS:
        others = [*common, *(condition for facet, condition in filters.items() if facet != name)]
        count = func.count().label("count")
        value = func.min(ImageFacet.value).label("value")
        statement = select(value, count).where(ImageFacet.facet == name)
        if others:
            statement = statement.where(ImageFacet.image_id.in_(select(Image.id).where(*others)))
        statement = statement.group_by(ImageFacet.key).order_by(count.desc(), value)
        facets[name] = [(str(v), int(c)) for v, c in session.execute(statement)]
    return SearchResult(total=int(total), items=items, facets=facets)


def _facet_filters(query: SearchQuery) -> dict[str, ColumnElement[bool]]:
    filters: dict[str, ColumnElement[bool]] = {}
    for name in FACETS:
        values = query.facet_values(name)
        if not values:
            continue
        vocabulary = FACET_VOCABULARIES.get(name)
        keys = {
            facet_key(vocabulary.display_name(value) if vocabulary else clean_text(value))
            for value in values
            if clean_text(value)
        }
        if keys:
            filters[name] = Image.id.in_(
                select(ImageFacet.image_id).where(ImageFacet.facet == name, ImageFacet.key.in_(sorted(keys)))
            )
    return filters


def _common_conditions(query: SearchQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [condition.clause() for condition in query.where]
    if query.visible_datasets is not None:
        visible = [clean_text(name) for name in query.visible_datasets]
        conditions.append(Image.dataset_id.in_(select(Dataset.id).where(Dataset.alias.in_(visible))))
    text = clean_text(query.text or "")
    if text:
        # Bound parameters plus autoescape: '%', '_' and quotes are literal characters.
        matches = [Image.slide_id.icontains(text, autoescape=True), Image.alias.icontains(text, autoescape=True)]
        key = normalise_key(text)
        if key:
            matches.append(
                Image.id.in_(
                    select(ImageFacet.image_id).where(
                        ImageFacet.facet == "diagnosis", ImageFacet.key.contains(key, autoescape=True)
                    )
                )
            )
        conditions.append(or_(*matches))
    return conditions


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
