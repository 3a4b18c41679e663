"""The audit table: one row per entry of the append-only, hash-chained log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from slidebank.db.models.base import NAME_LENGTH, SHA256_LENGTH, Base, utcnow


class AuditEvent(Base):
    """One entry of the append-only, hash-chained audit log.

    `entry_hash` = SHA-256 over the previous entry's hash and this entry's canonical JSON, so an
    edited, deleted or reordered entry breaks every hash after it (`slidebank audit verify`).
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # the chain order
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(NAME_LENGTH))  # user name, or "anonymous" / "system"
    action: Mapped[str] = mapped_column(String(64), index=True)
    dataset: Mapped[str | None] = mapped_column(String(NAME_LENGTH), index=True)
    slide_id: Mapped[str | None] = mapped_column(String(NAME_LENGTH), index=True)
    grant_uuid: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    previous_hash: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    entry_hash: Mapped[str] = mapped_column(String(SHA256_LENGTH), unique=True)
