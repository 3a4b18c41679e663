"""Wire formats of the access routes: sessions, the caller, access requests and decisions, grants,
notices, erasure and the audit log — request bodies and answers."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from slidebank.api.schemas import Timestamp, TypedDict, wire

Role = Literal["administrator", "data_steward", "dac_member", "researcher"]
RequestStatus = Literal["pending", "approved", "rejected", "revoked"]


# --- request bodies -----------------------------------------------------------------------------------


class LogIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class NewRequest(BaseModel):
    dataset: str = Field(max_length=255)
    purpose: str = Field(min_length=1, max_length=4000)
    project: str | None = Field(default=None, max_length=255)


class Approval(BaseModel):
    expires: date


class Rejection(BaseModel):
    reason: str = Field(min_length=1, max_length=4000)


class NewToken(BaseModel):
    label: str = Field(default="token", min_length=1, max_length=128)
    expires_days: int = Field(default=90, ge=1, le=365, description="At most a year")


class ErasureRequest(BaseModel):
    subject: str = Field(min_length=1, max_length=255, description="The subject's pseudonym (SUBJ-…)")


# --- answers ------------------------------------------------------------------------------------------


@wire
class LoggedIn(TypedDict):
    """A browser log-in; the session cookie is HttpOnly, `csrf` goes in X-CSRF-Token on changes."""

    name: str
    role: Role | None
    csrf: str


@wire
class LoggedOut(TypedDict):
    name: str
    logged_out: bool


@wire
class SessionsEnded(TypedDict):
    name: str
    sessions_ended: int


@wire
class TokenEntry(TypedDict):
    """A token as listed: its id (the first 12 hex digits of its digest), never the secret."""

    id: str
    user: str
    label: str
    created_at: Timestamp
    expires_at: Timestamp | None
    revoked_at: Timestamp | None


@wire
class CreatedToken(TokenEntry):
    token: Annotated[str, Field(description="The bearer token, shown this once")]


@wire
class Account(TypedDict):
    name: str
    role: Role
    uuid: str
    disabled: bool
    organisation: str | None
    identity_provider: Annotated[str | None, Field(description="The OIDC issuer, for accounts from one")]


@wire
class Me(TypedDict):
    """The caller and what it may read (`readable_datasets` null: every dataset)."""

    name: str
    role: Role | None
    readable_datasets: list[str] | None
    committees: list[str]
    stewarded_datasets: list[str]
    grants: Annotated[dict[str, str], Field(description="Dataset → grant id, for each live grant")]


@wire
class RequestFiled(TypedDict):
    id: str
    status: Literal["pending"]


@wire
class AccessRequest(TypedDict):
    id: str
    user: str
    dataset: str
    purpose: str
    project: str | None
    status: RequestStatus
    reason: Annotated[str | None, Field(description="Why it was rejected")]
    created_at: Timestamp


@wire
class Approved(TypedDict):
    grant: str
    expires: Annotated[date, Field(description="The grant lasts until the end of this day (UTC)")]


@wire
class Rejected(TypedDict):
    id: str
    status: Literal["rejected"]


@wire
class Revoked(TypedDict):
    grant: str
    status: Literal["revoked"]


@wire
class Notification(TypedDict):
    message: str
    at: Timestamp


@wire
class ErasureReport(TypedDict):
    images: int
    blobs_deleted: int
    datasets: list[str]


@wire
class AuditEntry(TypedDict):
    """One entry of the hash-chained audit log."""

    id: int
    at: Timestamp
    actor: str
    action: str
    dataset: str | None
    slide_id: str | None
    grant: str | None
    detail: dict[str, Any]
    hash: Annotated[str, Field(description="SHA-256 over the previous entry's hash and this entry")]
