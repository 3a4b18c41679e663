"""Slide-level facts: numbers or words an algorithm measured (QC and others), searchable with `--where`."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session

from slidebank.catalog.changes import note_changed
from slidebank.catalog.errors import CatalogError
from slidebank.catalog.query import FACT_NAME, MAX_FACET_VALUE
from slidebank.db.models import Image, SlideFact


def set_facts(session: Session, slide_id: str, values: dict[str, float | str], job_id: int | None = None) -> None:
    """Record (replace) named numbers or words about one slide, with the job that measured them."""
    image_id = session.scalar(select(Image.id).where(Image.slide_id == slide_id))
    if image_id is None:
        raise LookupError(f"no slide {slide_id!r}")
    if values:
        session.execute(delete(SlideFact).where(SlideFact.image_id == image_id, SlideFact.name.in_(list(values))))
    for name, value in values.items():
        session.add(SlideFact(**fact_row(image_id, name, value, job_id)))
    note_changed(session, [image_id])


def fact_row(image_id: int, name: str, value: float | str, job_id: int | None) -> dict[str, Any]:
    """The slide_facts row of one fact: a number in `value`, anything else as text in `text`."""
    if not FACT_NAME.match(name):
        raise CatalogError(f"fact names are dotted lower-case words, not {name!r}")
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    text = None if number is not None else str(value)[:MAX_FACET_VALUE]
    return {"image_id": image_id, "name": name, "value": number, "text": text, "job_id": job_id,
            "updated_at": datetime.now(UTC)}


def facts(session: Session, slide_id: str) -> dict[str, dict[str, float | str | None]]:
    """{"qc": {"blur_fraction": 0.01, …}, "stain": {…}}: facts grouped by their first name part."""
    return facts_of(session, Image.slide_id == slide_id)


def facts_of(session: Session, image: ColumnElement[bool]) -> dict[str, dict[str, float | str | None]]:
    rows = session.execute(
        select(SlideFact.name, SlideFact.value, SlideFact.text)
        .join(Image, Image.id == SlideFact.image_id).where(image).order_by(SlideFact.name)
    ).all()
    grouped: dict[str, dict[str, float | str | None]] = defaultdict(dict)
    for name, value, text in rows:
        namespace, _, key = name.partition(".")
        grouped[namespace][key] = value if value is not None else text
    return dict(grouped)
