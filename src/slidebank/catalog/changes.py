"""Recording what changed in the catalog, for the search index of every process.

Call `note_changed(session, image_ids)` in any transaction that changes what search sees of those
images (their facets, facts, or their existence), and `note_rebuild(session)` after changes too
large to list (bulk loads). See `slidebank.db.models.search`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from slidebank.db.locks import serialise_writers
from slidebank.db.models import CatalogChange, SearchState
from slidebank.db.rows import insert_rows

STATE_ROW = 1
KEEP_CHANGES = 20_000  # versions of change log kept; a process further behind rebuilds its index
PRUNE_EVERY = 1_000


@dataclass(frozen=True)
class CatalogVersion:
    version: int
    rebuild_below: int


def note_changed(session: Session, image_ids: Collection[int]) -> int:
    """Record that these images changed, at a new catalog version (returned)."""
    version = _bump(session)
    if image_ids:
        insert_rows(session, CatalogChange,
                    [{"version": version, "image_id": i} for i in sorted(set(image_ids))])
    if version % PRUNE_EVERY == 0 and version > KEEP_CHANGES:
        cutoff = version - KEEP_CHANGES
        session.execute(delete(CatalogChange).where(CatalogChange.version <= cutoff))
        session.execute(update(SearchState).where(SearchState.id == STATE_ROW, SearchState.rebuild_below < cutoff)
                        .values(rebuild_below=cutoff))
    return version


def note_rebuild(session: Session) -> int:
    """Make every process rebuild its index from the catalog once this transaction commits."""
    version = _bump(session)
    session.execute(update(SearchState).where(SearchState.id == STATE_ROW).values(rebuild_below=version))
    return version


def current(session: Session) -> CatalogVersion:
    row = session.execute(select(SearchState.version, SearchState.rebuild_below)
                          .where(SearchState.id == STATE_ROW)).first()
    return CatalogVersion(int(row[0]), int(row[1])) if row else CatalogVersion(0, 0)


def changed_since(session: Session, version: int) -> list[int]:
    return list(session.scalars(select(CatalogChange.image_id).where(CatalogChange.version > version).distinct()))


def _bump(session: Session) -> int:
    """The UPDATE's row lock is held to commit: concurrent writers get their versions in commit order."""
    serialise_writers(session)
    version = session.scalar(update(SearchState).where(SearchState.id == STATE_ROW)
                             .values(version=SearchState.version + 1).returning(SearchState.version))
    if version is None:  # a catalog created without the row (metadata.create_all in tests)
        session.add(SearchState(id=STATE_ROW, version=1, rebuild_below=0))
        session.flush()
        return 1
    return int(version)
