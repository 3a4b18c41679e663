"""Erasure on request (GDPR art. 17): a data subject's slides, metadata and derived results go.

The catalog rows go in one transaction, then every stored file only they used is deleted from the
blob store (and, with encryption at rest, its key destroyed first). What remains is a tombstone
of digests and an audit entry, so the erasure can be proven without identifying anyone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from slidebank.access.models import Erasure
from slidebank.node import Node


@dataclass(frozen=True)
class ErasureReport:
    images: int
    blobs_deleted: int
    datasets: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"images": self.images, "blobs_deleted": self.blobs_deleted, "datasets": list(self.datasets)}


def erase_subject(node: Node, pseudonym: str, requested_by: str) -> ErasureReport:
    """Erase everything of the subject known here by `pseudonym` (e.g. "SUBJ-3f2a…")."""
    with node.ingest_lock():  # no ingest may register a blob we are about to delete
        erased = node.catalog.erase_subject(pseudonym)  # annotations, heatmaps, facts go by cascade
        node.access.forget_pseudonym(pseudonym)  # the way back goes first: nothing may re-identify
        node.jobs.forget_slides(erased.slide_ids)  # job records keep that a task ran, not its results
        still_used = node.catalog.referenced_blobs()
        deleted = 0
        for sha256 in sorted(erased.blobs - still_used):
            node.store.delete(sha256)
            deleted += 1
    slide_digest = hashlib.sha256("\n".join(sorted(erased.slide_ids)).encode()).hexdigest()
    subject_digest = hashlib.sha256(pseudonym.encode()).hexdigest()
    with node.access.writing() as session:
        session.add(Erasure(subject_sha256=subject_digest, requested_by=requested_by,
                            images=len(erased.slide_ids), blobs_deleted=deleted, slide_ids_sha256=slide_digest))
    for dataset in erased.datasets or (None,):
        node.audit.record(requested_by, "subject.erase", dataset=dataset,
                          detail={"images": len(erased.slide_ids), "blobs_deleted": deleted,
                                  "subject_sha256": subject_digest})
    return ErasureReport(len(erased.slide_ids), deleted, erased.datasets)
