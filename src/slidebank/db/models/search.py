"""The catalog's change log, which keeps every process's in-memory search index current.

Search counts facets over bitmaps held in each server process (`catalog.search_index`). Every
transaction that changes what search sees (registration, facet refresh, facts, erasure, bulk
loads) bumps `SearchState.version` and records the images it touched under that version, in the
same transaction; a process compares the version with its own on every search and re-reads just
those images. The version's row lock orders concurrent writers, so versions commit in order and a
reader never skips one.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, PrimaryKeyConstraint
from sqlalchemy.orm import Mapped, mapped_column

from slidebank.db.models.base import Base


class SearchState(Base):
    """One row: the catalog version, and below which version a reader must rebuild from scratch
    (after a bulk load, or when the changes it would need were pruned)."""

    __tablename__ = "search_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    rebuild_below: Mapped[int] = mapped_column(BigInteger, default=0)


class CatalogChange(Base):
    """An image whose searchable content changed (or that was erased) at a catalog version.

    No foreign key: the row must outlive the erased image it reports.
    """

    __tablename__ = "catalog_changes"
    __table_args__ = (PrimaryKeyConstraint("version", "image_id"),)

    version: Mapped[int] = mapped_column(BigInteger)
    image_id: Mapped[int] = mapped_column(Integer)
