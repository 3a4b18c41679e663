"""The append-only, hash-chained audit log of every read of pixels or metadata and every change.

Each entry's hash covers the previous entry's hash and the entry's own canonical JSON, so editing,
deleting or reordering any entry breaks the chain from there on; `verify` finds the first break.

A change and its entry commit together: services call `append` with the session of the change
itself. Appends are serialised by the database's write lock (SQLite) or a transaction advisory
lock (PostgreSQL), so concurrent processes extend one chain. Reads, which change nothing, are
recorded with `record`, in a transaction of their own.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slidebank.db import UnitOfWork
from slidebank.db.locks import serialise_writers
from slidebank.db.models import AuditEvent
from slidebank.db.models.base import iso_utc

GENESIS = "0" * 64
TILE_WINDOW_SECONDS = 300  # tile reads: one entry per reader, slide and place per 5 minutes
TILE_WINDOW_ENTRIES = 100_000  # readers × slides × places remembered per process (bounded memory)
APPEND_ATTEMPTS = 5


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    entries: int
    first_bad_id: int | None = None
    problem: str | None = None


def _canonical(event: AuditEvent) -> bytes:
    at = event.at if event.at.tzinfo else event.at.replace(tzinfo=UTC)
    body = {
        "id": event.id, "at": at.isoformat(timespec="microseconds"), "actor": event.actor, "action": event.action,
        "dataset": event.dataset, "slide_id": event.slide_id, "grant": event.grant_uuid, "detail": event.detail,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def _chain(previous_hash: str, event: AuditEvent) -> str:
    return hashlib.sha256(previous_hash.encode() + b"\n" + _canonical(event)).hexdigest()


class AuditLog:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._tile_window: TTLCache[tuple[str, str, str], bool] = TTLCache(TILE_WINDOW_ENTRIES, TILE_WINDOW_SECONDS)
        self._lock = threading.Lock()  # cachetools caches are not thread-safe; the server's pool is threads

    def append(
        self, session: Session, actor: str, action: str, *, dataset: str | None = None,
        slide_id: str | None = None, grant: str | None = None, detail: dict[str, Any] | None = None,
    ) -> None:
        """Add an entry inside the caller's write transaction: it commits with the change it records."""
        serialise_writers(session)
        head = session.execute(
            select(AuditEvent.id, AuditEvent.entry_hash).order_by(AuditEvent.id.desc()).limit(1)
        ).first()
        event = AuditEvent(
            id=(head.id + 1) if head else 1, at=datetime.now(UTC), actor=actor, action=action, dataset=dataset,
            slide_id=slide_id, grant_uuid=grant, detail=detail or {},
            previous_hash=head.entry_hash if head else GENESIS,
        )
        event.entry_hash = _chain(event.previous_hash, event)
        session.add(event)
        session.flush()

    def record(
        self, actor: str, action: str, *, dataset: str | None = None, slide_id: str | None = None,
        grant: str | None = None, detail: dict[str, Any] | None = None,
    ) -> None:
        """An entry in a transaction of its own: for reads, which change nothing else."""
        for attempt in range(APPEND_ATTEMPTS):
            try:
                with self._uow.write() as session:
                    self.append(session, actor, action, dataset=dataset, slide_id=slide_id, grant=grant,
                                detail=detail)
                return
            except IntegrityError:  # a writer outside the lock protocol took that position; read again
                if attempt == APPEND_ATTEMPTS - 1:
                    raise

    def tile_read_logged(self, actor: str, slide_id: str, where: str) -> bool:
        """Whether such a tile read is already covered by an entry of the current window."""
        with self._lock:
            return (actor, slide_id, where) in self._tile_window

    def record_tile_read(self, actor: str, dataset: str, slide_id: str, where: str, grant: str | None) -> None:
        """Tile reads are many: the first read of `where` (e.g. a Deep Zoom level) of a slide by a
        reader opens a 5-minute window in which its further tile reads are not logged again."""
        key = (actor, slide_id, where)
        with self._lock:
            if key in self._tile_window:
                return
            self._tile_window[key] = True
        self.record(actor, "tiles.read", dataset=dataset, slide_id=slide_id, grant=grant,
                    detail={"where": where, "window_seconds": TILE_WINDOW_SECONDS})

    def entries(self, dataset: str | None = None) -> Iterator[dict[str, Any]]:
        with self._uow.read() as session:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if dataset is not None:
                query = query.where(AuditEvent.dataset == dataset)
            for event in session.scalars(query):
                yield self._json(event)

    def verify(self) -> ChainCheck:
        with self._uow.read() as session:
            return self._verify(session)

    @staticmethod
    def _verify(session: Session) -> ChainCheck:
        previous, expected_id, count = GENESIS, 1, 0
        for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)):
            count += 1
            if event.id != expected_id:
                return ChainCheck(False, count, event.id, f"entry {expected_id} is missing")
            if event.previous_hash != previous:
                return ChainCheck(False, count, event.id, "does not follow the entry before it")
            if _chain(previous, event) != event.entry_hash:
                return ChainCheck(False, count, event.id, "was changed after it was written")
            previous, expected_id = event.entry_hash, expected_id + 1
        return ChainCheck(True, count)

    @staticmethod
    def _json(event: AuditEvent) -> dict[str, Any]:
        return {"id": event.id, "at": iso_utc(event.at), "actor": event.actor, "action": event.action,
                "dataset": event.dataset, "slide_id": event.slide_id, "grant": event.grant_uuid,
                "detail": event.detail, "hash": event.entry_hash}


__all__ = ["AuditLog", "ChainCheck", "GENESIS"]
