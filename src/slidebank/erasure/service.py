"""Erasure on request (GDPR art. 17): a data subject's slides, metadata and derived results go.

One transaction removes the catalog graph (annotations, heatmaps and facts go by cascade), the way
back from the pseudonym, what job records say about the slides, and the key headers — which
crypto-shreds the stored files at commit — and writes the tombstone, the audit entries and a
governance-version bump, so every process stops serving the slides on its next request. The
encrypted files themselves are deleted after the commit; a crash in between leaves unreferenced
blobs that the next ingest's recovery removes, never a catalog entry without its file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from slidebank.access import version
from slidebank.access.errors import AccessError
from slidebank.access.principal import Principal
from slidebank.access.pseudonyms import Pseudonyms
from slidebank.audit import AuditLog
from slidebank.catalog import files as catalog_files
from slidebank.catalog.erasure import erase_subject
from slidebank.db import UnitOfWork
from slidebank.db.models import Erasure
from slidebank.jobs import Jobs
from slidebank.storage import BlobStore


@dataclass(frozen=True)
class ErasureReport:
    images: int
    blobs_deleted: int
    datasets: tuple[str, ...]
    slide_ids: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"images": self.images, "blobs_deleted": self.blobs_deleted, "datasets": list(self.datasets)}


class Erasures:
    def __init__(self, uow: UnitOfWork, audit: AuditLog, store: BlobStore,
                 exclusive: Callable[[], AbstractContextManager[None]]) -> None:
        self._uow = uow
        self._audit = audit
        self._store = store
        self._exclusive = exclusive  # no ingest may register a blob we are about to delete

    def may_erase(self, actor: Principal, pseudonym: str) -> bool:
        """Administrators, and data stewards of every dataset holding the subject."""
        with self._uow.read() as session:
            datasets = catalog_files.subject_datasets(session, pseudonym)
        return bool(datasets) and (actor.is_administrator or datasets <= actor.stewarded)

    def erase(self, pseudonym: str, actor: Principal) -> ErasureReport:
        """Erase everything of the subject known here by `pseudonym` (e.g. "SUBJ-3f2a…")."""
        if not self.may_erase(actor, pseudonym):
            raise AccessError(f"no subject {pseudonym!r} in the datasets you steward")
        subject_digest = hashlib.sha256(pseudonym.encode()).hexdigest()
        with self._exclusive():
            with self._uow.write() as session:
                erased = erase_subject(session, pseudonym)
                Pseudonyms.forget(session, pseudonym)  # the way back goes too: nothing may re-identify
                Jobs.forget_slides(session, erased.slide_ids)  # records keep that a task ran, not its results
                doomed = sorted(erased.blobs - catalog_files.referenced_blobs(session, sorted(erased.blobs)))
                slide_digest = hashlib.sha256("\n".join(sorted(erased.slide_ids)).encode()).hexdigest()
                session.add(Erasure(subject_sha256=subject_digest, requested_by=actor.name,
                                    images=len(erased.slide_ids), blobs_deleted=len(doomed),
                                    slide_ids_sha256=slide_digest))
                version.bump(session)
                for dataset in erased.datasets or (None,):
                    self._audit.append(session, actor.name, "subject.erase", dataset=dataset,
                                       detail={"images": len(erased.slide_ids), "blobs_deleted": len(doomed),
                                               "subject_sha256": subject_digest})
            for sha256 in doomed:
                self._store.delete(sha256)
        return ErasureReport(len(erased.slide_ids), len(doomed), erased.datasets, erased.slide_ids)
