"""Lookups about stored slides: their files and keys, their dataset, what the blob store must keep."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import CompoundSelect, delete, select, union_all
from sqlalchemy.orm import Session

from slidebank.catalog.records import StoredFile
from slidebank.db.models import Annotation, BiologicalBeing, Dataset, Image, ImageFile, PendingBlob
from slidebank.db.rows import among


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


def referenced_blobs(session: Session, among_digests: list[str] | None = None) -> set[str]:
    """The blobs the catalog points to (all, or those among `among_digests`); the blob store's
    garbage collector keeps exactly these."""
    dialect = session.get_bind().dialect.name

    def where(column: Any) -> Any:
        return column.is_not(None) if among_digests is None else among(dialect, column, among_digests)

    statement: CompoundSelect[str | None] = union_all(
        select(ImageFile.sha256).where(where(ImageFile.sha256)),
        select(Image.thumbnail_sha256).where(where(Image.thumbnail_sha256)),
        select(Annotation.sha256).where(where(Annotation.sha256)),
    )
    return {sha for sha in session.scalars(statement) if sha}


def dataset_blobs(session: Session, dataset_id: int) -> list[str]:
    """The blobs of a dataset's images (files and thumbnails)."""
    files = select(ImageFile.sha256).join(Image, Image.id == ImageFile.image_id).where(Image.dataset_id == dataset_id)
    thumbnails = select(Image.thumbnail_sha256).where(Image.dataset_id == dataset_id)
    return sorted({digest for digest in session.scalars(union_all(files, thumbnails)) if digest})


def note_pending(session: Session, digests: Iterable[str]) -> None:
    """Log blobs that are (about to be) in the store without a reference yet; see `PendingBlob`."""
    wanted = set(digests)
    known = set(session.scalars(select(PendingBlob.sha256).where(PendingBlob.sha256.in_(sorted(wanted)))))
    session.add_all(PendingBlob(sha256=digest) for digest in sorted(wanted - known))


def pending(session: Session, limit: int) -> list[str]:
    return list(session.scalars(select(PendingBlob.sha256).order_by(PendingBlob.sha256).limit(limit)))


def forget_pending(session: Session, digests: list[str]) -> None:
    session.execute(delete(PendingBlob).where(PendingBlob.sha256.in_(digests)))
