"""Erasing a data subject's part of the MetaFleX graph (GDPR art. 17), inside the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from slidebank.catalog.changes import note_changed
from slidebank.db.models import (
    BiologicalBeing,
    Block,
    Case,
    Dataset,
    Image,
    ImageFile,
    Slide,
    Specimen,
    block_specimens,
)


@dataclass(frozen=True)
class ErasedSubject:
    slide_ids: tuple[str, ...]
    datasets: tuple[str, ...]
    blobs: frozenset[str]  # sha256 of every stored file the erased images used
    beings: int


def erase_subject(session: Session, pseudonym: str) -> ErasedSubject:
    """Delete every object of one data subject, in every dataset: the being, its cases and
    specimens, the blocks holding its specimens, their slides and images (with levels, files,
    facets, annotations and observations, by cascade). One transaction; blobs are the caller's."""
    beings = list(session.scalars(select(BiologicalBeing.id).where(BiologicalBeing.alias == pseudonym)))
    specimens = list(session.scalars(select(Specimen.id).where(Specimen.biological_being_id.in_(beings))))
    blocks = list(session.scalars(
        select(block_specimens.c.block_id).where(block_specimens.c.specimen_id.in_(specimens)).distinct()))
    slides = list(session.scalars(select(Slide.id).where(Slide.block_id.in_(blocks))))
    images = session.execute(
        select(Image.id, Image.slide_id, Dataset.alias, Image.thumbnail_sha256)
        .join(Dataset, Dataset.id == Image.dataset_id).where(Image.glass_slide_id.in_(slides))
    ).all()
    image_ids = [row.id for row in images]
    blobs = set(session.scalars(select(ImageFile.sha256).where(ImageFile.image_id.in_(image_ids))))
    blobs |= {row.thumbnail_sha256 for row in images if row.thumbnail_sha256}
    # Children first; observations, facets, files, levels and annotations go by ON DELETE CASCADE.
    for table, column, ids in (
        (Image, Image.id, image_ids), (Slide, Slide.id, slides), (Block, Block.id, blocks),
        (Specimen, Specimen.id, specimens), (Case, Case.biological_being_id, beings),
        (BiologicalBeing, BiologicalBeing.id, beings),
    ):
        session.execute(delete(table).where(column.in_(ids)))
    if image_ids:
        note_changed(session, image_ids)
    return ErasedSubject(
        slide_ids=tuple(row.slide_id for row in images), datasets=tuple(sorted({row.alias for row in images})),
        blobs=frozenset(blobs), beings=len(beings),
    )
