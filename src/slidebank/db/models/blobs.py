"""The pending-blob log: blobs published to the store that the catalog may not reference yet.

An ingest worker writes a blob's digest here (and commits) before the blob appears in the store;
registration then references it. Recovery after a crash checks only these digests — deleting the
ones nothing references — instead of listing a store of millions of objects.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from slidebank.db.models.base import SHA256_LENGTH, Base, utcnow


class PendingBlob(Base):
    __tablename__ = "pending_blobs"

    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), primary_key=True)
    noted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
