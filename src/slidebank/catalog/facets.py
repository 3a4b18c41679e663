"""The facet index: one row per (image, facet, value), derived from the MetaFleX graph.

Written in the same transaction as the graph it derives from, so faceted counts at millions of
images are one indexed GROUP BY instead of six-table joins.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, select, union_all
from sqlalchemy.orm import Session

from slidebank.catalog.changes import note_changed
from slidebank.catalog.query import MAX_FACET_VALUE, chunks, facet_key
from slidebank.catalog.vocabulary import clean_text
from slidebank.db.models import (
    BiologicalBeing,
    Dataset,
    Image,
    ImageFacet,
    Observation,
    Slide,
    Specimen,
    Staining,
    block_specimens,
    slide_stainings,
)
from slidebank.db.rows import among, insert_rows


def refresh_facets(session: Session, slide_ids: Iterable[str] | None = None) -> int:
    """Rebuild the facet index from the graph (all images, or these); returns images indexed.

    Registration keeps the index current; call this after editing metadata in other ways.
    """
    statement = select(Image.id).order_by(Image.id)
    if slide_ids is not None:
        statement = statement.where(Image.slide_id.in_(list(slide_ids)))
    ids = list(session.scalars(statement))
    for chunk in chunks(ids):
        index_images(session, chunk)
    return len(ids)


FacetRows = dict[tuple[int, str, str], str]
"""(image id, facet, key) -> displayed value: the rows of the facet index, one per value per image."""


def add_facet(rows: FacetRows, image_id: int, facet: str, raw: object) -> None:
    """Add one value of an image's facet as the index stores it (cleaned, keyed; the first spelling wins)."""
    if raw is None:
        return
    value = clean_text(str(raw))[:MAX_FACET_VALUE]
    key = facet_key(value)
    if key:
        rows.setdefault((image_id, facet, key), value)


def index_images(session: Session, image_ids: Sequence[int], derived: FacetRows | None = None,
                 derived_for: Collection[int] = ()) -> None:
    """(Re)write the facet rows of these images from the graph.

    A bulk load passes the rows it `derived` itself for the images `derived_for` (new images whose
    whole sample chain it created in this transaction, so nothing else can describe them): those are
    written as given instead of being read back through six joins."""
    rows: FacetRows = dict(derived or {})
    dialect = session.get_bind().dialect.name
    read = [image_id for image_id in image_ids if image_id not in derived_for] if derived_for else list(image_ids)
    if read:
        for facet, statement in _facet_sources(among(dialect, Image.id, read)):
            for image_id, raw in session.execute(statement):
                add_facet(rows, image_id, facet, raw)
        session.execute(delete(ImageFacet).where(among(dialect, ImageFacet.image_id, read)))
    if rows:
        insert_rows(session, ImageFacet,
                    [{"image_id": i, "facet": f, "key": k, "value": v} for (i, f, k), v in rows.items()])
    note_changed(session, image_ids)


def _facet_sources(mine: ColumnElement[bool]) -> list[tuple[str, Select[Any]]]:
    """(facet, SELECT image_id, value) for each facet of the images `mine` selects, following the graph's paths."""
    to_specimen = (
        select(Image.id)
        .join(Slide, Slide.id == Image.glass_slide_id)
        .join(block_specimens, block_specimens.c.block_id == Slide.block_id)
        .join(Specimen, Specimen.id == block_specimens.c.specimen_id)
        .where(mine)
    )
    diagnosis_text = func.coalesce(Observation.meaning, Observation.free_text)
    is_diagnosis = Observation.statement_type == "Diagnosis"
    diagnoses = union_all(
        select(Image.id, diagnosis_text)
        .join(Observation, Observation.image_id == Image.id)
        .where(mine, is_diagnosis),
        select(Image.id, diagnosis_text)
        .join(Observation, Observation.glass_slide_id == Image.glass_slide_id)
        .where(mine, is_diagnosis),
        select(Image.id, diagnosis_text)
        .join(Slide, Slide.id == Image.glass_slide_id)
        .join(Observation, Observation.block_id == Slide.block_id)
        .where(mine, is_diagnosis),
        to_specimen.add_columns(diagnosis_text)
        .join(Observation, Observation.specimen_id == Specimen.id)
        .where(is_diagnosis),
        to_specimen.add_columns(diagnosis_text)
        .join(Observation, Observation.case_id == Specimen.case_id)
        .where(is_diagnosis),
        to_specimen.add_columns(diagnosis_text)
        .join(Observation, Observation.biological_being_id == Specimen.biological_being_id)
        .where(is_diagnosis),
    )
    return [
        ("dataset", select(Image.id, Dataset.alias).join(Dataset, Dataset.id == Image.dataset_id).where(mine)),
        ("vendor", select(Image.id, Image.vendor).where(mine)),
        (
            "species",
            to_specimen.add_columns(BiologicalBeing.species).join(
                BiologicalBeing, BiologicalBeing.id == Specimen.biological_being_id
            ),
        ),
        ("organ", to_specimen.add_columns(Specimen.anatomical_site)),
        (
            "stain",
            select(Image.id, Staining.name)
            .join(slide_stainings, slide_stainings.c.glass_slide_id == Image.glass_slide_id)
            .join(Staining, Staining.id == slide_stainings.c.staining_id)
            .where(mine),
        ),
        ("diagnosis", select(diagnoses.subquery())),
    ]
