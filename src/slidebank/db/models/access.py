"""Governance tables: people, tokens, browser sessions, data access committees, requests, grants,
notices, erasure tombstones, the pseudonym map, and the governance version every process watches."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, declared_attr, mapped_column, relationship

from slidebank.db.models.base import (
    NAME_LENGTH,
    SHA256_LENGTH,
    Base,
    new_uuid,
    utcnow,
)
from slidebank.db.models.catalog import Dataset, Organisation

ROLES = ("administrator", "data_steward", "dac_member", "researcher")
REQUEST_STATES = ("pending", "approved", "rejected", "revoked")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("name"),
        UniqueConstraint("oidc_issuer", "oidc_subject"),
        CheckConstraint("role IN ('administrator', 'data_steward', 'dac_member', 'researcher')", name="role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    role: Mapped[str] = mapped_column(String(32))
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"), index=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))  # argon2id; None: token/OIDC only
    oidc_issuer: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    oidc_subject: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    organisation: Mapped[Organisation | None] = relationship()


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(NAME_LENGTH))
    token_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    user: Mapped[User] = relationship()


class DatasetRole:
    """A person's part in one dataset: each person at most once per dataset and part."""

    @declared_attr.directive
    def __table_args__(cls) -> tuple[UniqueConstraint]:  # a constraint object per table
        return (UniqueConstraint("dataset_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


class CommitteeMember(DatasetRole, Base):
    """Who sits on the data access committee (DAC) of a dataset, and so decides its requests."""

    __tablename__ = "committee_members"


class DatasetSteward(DatasetRole, Base):
    """Data stewards submit and curate the datasets they are stewards of."""

    __tablename__ = "dataset_stewards"


class AccessRequest(Base):
    __tablename__ = "access_requests"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'approved', 'rejected', 'revoked')", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(Text)
    project: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    user: Mapped[User] = relationship(foreign_keys=[user_id])
    dataset: Mapped[Dataset] = relationship()


class Grant(Base):
    """Permission to read one dataset until `expires_at`, from an approved request or a passport visa."""

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("access_requests.id", ondelete="SET NULL"))
    granted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    dataset: Mapped[Dataset] = relationship()


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Erasure(Base):
    """The tombstone of an erased data subject: that it happened, when, at whose request, how much.

    It keeps digests, not the pseudonym or slide ids, so the tombstone itself identifies nobody.
    """

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    subject_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), index=True)
    requested_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    images: Mapped[int] = mapped_column(Integer)
    blobs_deleted: Mapped[int] = mapped_column(Integer)
    slide_ids_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))


class PseudonymEntry(Base):
    """The way back from a pseudonym to the submitter's identifier, kept only where the node is
    configured to (SLIDEBANK_KEEP_PSEUDONYM_MAP=1), and then only encrypted to the node key."""

    __tablename__ = "pseudonym_map"
    __table_args__ = (UniqueConstraint("pseudonym"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(NAME_LENGTH))
    sealed_identifier: Mapped[bytes] = mapped_column(LargeBinary)  # a crypt4gh message to the node key
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GovernanceState(Base):
    """One row: a number every change of who may read what increments, in the change's transaction.

    Each server process compares it with the number its caches were built at, on every request, so a
    grant, revocation, policy change, disabled account, ended session or erasure takes effect on the
    very next request in every process, however many there are.
    """

    __tablename__ = "governance_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class BrowserSession(Base):
    """A web log-in; the cookie carries a random id whose digest is stored, so ending it is a row update."""

    __tablename__ = "browser_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    user: Mapped[User] = relationship()


class LoginFailure(Base):
    """A failed web log-in, kept for the rate limit per account and per address (then pruned)."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_name_at", "name", "at"), Index("ix_login_failures_address_at", "address", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
