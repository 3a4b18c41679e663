"""Lookups about stored slides: their files and keys, their dataset, what the blob store must keep."""

from __future__ import annotations

from sqlalchemy import CompoundSelect, select, union_all
from sqlalchemy.orm import Session

from slidebank.catalog.records import StoredFile
from slidebank.db.models import Annotation, BiologicalBeing, Dataset, Image, ImageFile


def slide_id_for_source(session: Session, sha256: str) -> str | None:
    """The slide already ingested from these source bytes, if any (de-duplication)."""
    return session.scalar(select(Image.slide_id).where(Image.source_sha256 == sha256))


def slide_exists(session: Session, slide_id: str) -> bool:
    return session.scalar(select(Image.id).where(Image.slide_id == slide_id)) is not None


def slide_dataset(session: Session, slide_id: str) -> str | None:
    """The dataset a slide belongs to (what access is decided on); None if there is no such slide."""
    return session.scalar(
        select(Dataset.alias).join(Image, Image.dataset_id == Dataset.id).where(Image.slide_id == slide_id)
    )


def pixel_size(session: Session, slide_id: str) -> tuple[float, float] | None:
    """µm per level-0 pixel (x, y), or None when it is unknown (or there is no such slide)."""
    row = session.execute(select(Image.mpp_x, Image.mpp_y).where(Image.slide_id == slide_id)).first()
    return (float(row[0]), float(row[1])) if row is not None and row[0] and row[1] else None


def stored_files(session: Session, slide_id: str) -> list[StoredFile]:
    """The blobs of a slide with their key headers: what reading its pixels needs."""
    rows = session.scalars(
        select(ImageFile).join(Image, Image.id == ImageFile.image_id).where(Image.slide_id == slide_id)
        .order_by(ImageFile.level, ImageFile.id)
    )
    return [StoredFile(f.role, f.sha256, f.size, f.level, f.media_type, f.key_header) for f in rows]


def subject_datasets(session: Session, pseudonym: str) -> set[str]:
    """The datasets that hold objects of the subject with this pseudonym (empty: unknown subject)."""
    return set(session.scalars(
        select(Dataset.alias).join(BiologicalBeing, BiologicalBeing.dataset_id == Dataset.id)
        .where(BiologicalBeing.alias == pseudonym)))


def referenced_blobs(session: Session) -> set[str]:
    """Every blob the catalog points to; the blob store's garbage collector keeps exactly these."""
    statement: CompoundSelect[str | None] = union_all(
        select(ImageFile.sha256),
        select(Image.thumbnail_sha256).where(Image.thumbnail_sha256.is_not(None)),
        select(Annotation.sha256).where(Annotation.sha256.is_not(None)),
    )
    return {sha for sha in session.scalars(statement) if sha}
