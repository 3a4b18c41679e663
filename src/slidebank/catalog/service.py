"""The catalog of one node: what is stored, described as a MetaFleX graph, and found by search.

A thin facade over the catalog's modules (registration, facets, search, facts, files, datasets,
describe), each a set of functions over a session. Callers get plain JSON-serialisable values,
never ORM objects, so front ends cannot trigger lazy loads or hold sessions open. Use cases that
must change the catalog and something else in one transaction call the modules with their session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slidebank.catalog import datasets, describe, facets, facts, files, instances, registration, search
from slidebank.catalog.query import SearchQuery, SearchResult
from slidebank.catalog.records import DicomIdentity, IngestedSlide, StoredFile
from slidebank.catalog.search_index import SearchIndex
from slidebank.db import UnitOfWork

log = logging.getLogger(__name__)


class Catalog:
    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self.index = SearchIndex()  # this process's bitmaps, synced with the catalog on each search

    def register(self, slide: IngestedSlide, also: Callable[[Session], None] | None = None) -> str:
        """Register an ingested slide in one transaction (with what `also` writes in it)."""
        return registration.register(self.uow, slide, also)

    def refresh_facets(self, slide_ids: Iterable[str] | None = None) -> int:
        with self.uow.write() as session:
            return facets.refresh_facets(session, slide_ids)

    def search(self, query: SearchQuery) -> SearchResult:
        with self.uow.read() as session:
            return search.search(session, query, self.index)

    def warm_search_index(self) -> None:
        """Bring this process's search index to the catalog's version (seconds at millions of images).
        Best effort, for a background thread: a failure here is met again, and raised, by the next search."""
        try:
            with self.uow.read() as session, self.index.lock:
                self.index.sync(session)
        except Exception:  # noqa: BLE001 - the node may be closing; searches rebuild on demand
            log.warning("the search index was not built ahead of the first search", exc_info=True)

    def list_slides(self) -> list[dict[str, Any]]:
        with self.uow.read() as session:
            return search.list_slides(session)

    def get_slide(self, slide_id: str) -> dict[str, Any] | None:
        with self.uow.read() as session:
            return describe.describe_slide(session, slide_id)

    def datasets(self) -> list[dict[str, Any]]:
        with self.uow.read() as session:
            return datasets.datasets(session)

    def set_facts(self, slide_id: str, values: dict[str, float | str], job_id: int | None = None) -> None:
        with self.uow.write() as session:
            facts.set_facts(session, slide_id, values, job_id)

    def facts(self, slide_id: str) -> dict[str, dict[str, float | str | None]]:
        with self.uow.read() as session:
            return facts.facts(session, slide_id)

    def slide_id_for_source(self, sha256: str) -> str | None:
        with self.uow.read() as session:
            return files.slide_id_for_source(session, sha256)

    def slide_exists(self, slide_id: str) -> bool:
        with self.uow.read() as session:
            return files.slide_exists(session, slide_id)

    def slide_dataset(self, slide_id: str) -> str | None:
        with self.uow.read() as session:
            return files.slide_dataset(session, slide_id)

    def pixel_size(self, slide_id: str) -> tuple[float, float] | None:
        with self.uow.read() as session:
            return files.pixel_size(session, slide_id)

    def stored_files(self, slide_id: str) -> list[StoredFile]:
        with self.uow.read() as session:
            return files.stored_files(session, slide_id)

    def files_without_identity(self, after: int = 0, limit: int = 1000) -> list[tuple[int, StoredFile]]:
        with self.uow.read() as session:
            return instances.files_without_identity(session, after, limit)

    def record_identity(self, file_id: int, identity: DicomIdentity) -> bool:
        """Index one stored DICOM file (its own transaction); False if the file is gone or indexed."""
        try:
            with self.uow.write() as session:
                return instances.record_identity(session, file_id, identity)
        except IntegrityError:  # another process indexed it first
            return False

    def subject_datasets(self, pseudonym: str) -> set[str]:
        with self.uow.read() as session:
            return files.subject_datasets(session, pseudonym)

    def referenced_blobs(self, among_digests: list[str] | None = None) -> set[str]:
        """Which of these blobs the catalog points to (a store's sweep asks a chunk at a time); all
        of them without `among_digests`."""
        with self.uow.read() as session:
            return files.referenced_blobs(session, among_digests)

    def note_pending_blob(self, sha256: str) -> None:
        """Log a blob about to be published (committed at once, before it is in the store), so that
        recovery finds it if its slide is never registered."""
        try:
            with self.uow.write() as session:
                files.note_pending(session, [sha256])
        except IntegrityError:  # another process logged the same blob first
            pass

    def settle_pending_blobs(self, delete_blobs: Callable[[list[str]], None], batch: int = 1000) -> list[str]:
        """Recovery: of the logged blobs, have `delete_blobs` remove those nothing references, then
        forget them all; returns the deleted digests. Callers hold the node's ingest lock (no ingest
        is publishing meanwhile)."""
        deleted: list[str] = []
        while True:
            with self.uow.read() as session:
                digests = files.pending(session, batch)
                if not digests:
                    return deleted
                referenced = files.referenced_blobs(session, digests)
            orphans = [digest for digest in digests if digest not in referenced]
            delete_blobs(orphans)  # before forgetting them: a crash here leaves them logged, not leaked
            with self.uow.write() as session:
                files.forget_pending(session, digests)
            deleted += orphans
