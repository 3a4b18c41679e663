"""The append-only, hash-chained audit log of every read of pixels or slide metadata.

Each entry's hash covers the previous entry's hash and the entry's own canonical JSON, so editing,
deleting or reordering any entry breaks the chain from there on; `verify` finds the first break.
Appends are serialised by the database's write lock (SQLite) or a transaction advisory lock
(PostgreSQL), so concurrent server workers extend one chain.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slidebank.access.models import AuditEvent
from slidebank.catalog.database import WRITE_OPTIONS, session_factory

GENESIS = "0" * 64
CHAIN_LOCK_ID = 0x5A_0D17  # PostgreSQL advisory lock serialising appends to the chain
TILE_WINDOW_SECONDS = 300  # tile reads: one entry per reader, slide and level per 5 minutes


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
    def __init__(self, engine: Engine) -> None:
        self._read = session_factory(engine)
        self._write = session_factory(engine.execution_options(**WRITE_OPTIONS))
        self._dialect = engine.dialect.name
        self._seen_tiles: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def record(
        self, actor: str, action: str, *, dataset: str | None = None, slide_id: str | None = None,
        grant: str | None = None, detail: dict[str, Any] | None = None,
    ) -> None:
        for attempt in range(5):
            try:
                self._append(actor, action, dataset, slide_id, grant, detail)
                return
            except IntegrityError:  # a writer outside the lock protocol took that position; read again
                if attempt == 4:
                    raise

    def _append(
        self, actor: str, action: str, dataset: str | None, slide_id: str | None, grant: str | None,
        detail: dict[str, Any] | None,
    ) -> None:
        with self._write.begin() as session:
            if self._dialect == "postgresql":  # SQLite's write transaction already excludes other writers
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_ID})
            head = session.scalar(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1))
            event = AuditEvent(
                id=(head.id + 1) if head else 1, at=datetime.now(UTC), actor=actor, action=action, dataset=dataset,
                slide_id=slide_id, grant_uuid=grant, detail=detail or {},
                previous_hash=head.entry_hash if head else GENESIS,
            )
            event.entry_hash = _chain(event.previous_hash, event)
            session.add(event)

    def tile_read_logged(self, actor: str, slide_id: str, where: str) -> bool:
        """Whether such a tile read is already covered by an entry of the current window."""
        seen = self._seen_tiles.get((actor, slide_id, where))
        return seen is not None and time.monotonic() - seen < TILE_WINDOW_SECONDS

    def record_tile_read(self, actor: str, dataset: str, slide_id: str, where: str, grant: str | None) -> None:
        """Tile reads are many: the first read of `where` (e.g. a Deep Zoom level) of a slide by a
        reader opens a 5-minute window in which its further tile reads are not logged again."""
        key, now = (actor, slide_id, where), time.monotonic()
        with self._lock:
            if now - self._seen_tiles.get(key, -TILE_WINDOW_SECONDS) < TILE_WINDOW_SECONDS:
                return
            self._seen_tiles[key] = now
        self.record(actor, "tiles.read", dataset=dataset, slide_id=slide_id, grant=grant,
                    detail={"where": where, "window_seconds": TILE_WINDOW_SECONDS})

    def entries(self, dataset: str | None = None) -> Iterator[dict]:
        with self._read() as session:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if dataset is not None:
                query = query.where(AuditEvent.dataset == dataset)
            for event in session.scalars(query):
                yield self._json(event)

    def verify(self) -> ChainCheck:
        with self._read() as session:
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
        return {"id": event.id, "at": event.at.isoformat(), "actor": event.actor, "action": event.action,
                "dataset": event.dataset, "slide_id": event.slide_id, "grant": event.grant_uuid,
                "detail": event.detail, "hash": event.entry_hash}
