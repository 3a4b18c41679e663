"""Who may read what: accounts, tokens, datasets under policies, access requests, grants.

Every decision the HTTP layer makes goes through `Principal.can_read(dataset)`; a principal is
built here from a token, a password or an OIDC identity, with the datasets it may read resolved
once (open policies, the user's live grants, the datasets it stewards; everything for an
administrator).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from slidebank.access import OPERATOR
from slidebank.access.models import (
    ROLES,
    AccessRequest,
    ApiToken,
    CommitteeMember,
    DatasetSteward,
    Grant,
    Notification,
    PseudonymEntry,
    User,
)
from slidebank.access.oidc import Identity
from slidebank.audit.log import AuditLog
from slidebank.catalog.database import WRITE_OPTIONS, session_factory
from slidebank.catalog.models import Dataset, Organisation, Policy
from slidebank.catalog.service import NO_RESTRICTION
from slidebank.storage.crypt import NodeKeys, seal, unseal

TOKEN_PREFIX = "sbk_"
NAME_LIMIT = 128
_hasher = PasswordHasher()


class AccessError(Exception):
    """A request the caller can fix (unknown user, bad role, wrong state): answered 400."""


class NotAllowed(AccessError):
    """The principal may not do this: answered 403 (or 404 where existence itself is private)."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str | None = None
    user_id: int | None = None
    readable: frozenset[str] | None = frozenset()  # dataset aliases; None means every dataset
    grants: dict[str, str] = field(default_factory=dict)  # dataset alias -> grant uuid (for the audit)
    committees: frozenset[str] = frozenset()
    stewarded: frozenset[str] = frozenset()

    @property
    def authenticated(self) -> bool:
        return self.user_id is not None

    def can_read(self, dataset: str | None) -> bool:
        return dataset is not None and (self.readable is None or dataset in self.readable)

    def decides_for(self, dataset: str) -> bool:
        return self.role == "administrator" or dataset in self.committees


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Access:
    def __init__(self, engine: Engine, audit: AuditLog) -> None:
        self._audit = audit  # requests and decisions are recorded here, whichever front end made them
        self._read = session_factory(engine)
        self._write = session_factory(engine.execution_options(**WRITE_OPTIONS))

    @contextmanager
    def writing(self) -> Iterator[Session]:
        with self._write.begin() as session:
            yield session

    # --- people and credentials ------------------------------------------------------------------

    def add_user(self, name: str, role: str, organisation: str | None = None, password: str | None = None) -> dict:
        if role not in ROLES:
            raise AccessError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if not name or len(name) > NAME_LIMIT or not name.isprintable():
            raise AccessError("a user name is 1-128 printable characters")
        with self.writing() as session:
            if session.scalar(select(User).where(User.name == name)) is not None:
                raise AccessError(f"user {name!r} exists already")
            org = None
            if organisation:
                org = session.scalar(select(Organisation).where(Organisation.alias == organisation))
                if org is None:
                    org = Organisation(alias=organisation, name=organisation)
                    session.add(org)
            user = User(name=name, role=role, organisation=org,
                        password_hash=_hasher.hash(password) if password else None)
            session.add(user)
            session.flush()
            return self._user_json(user)

    def list_users(self) -> list[dict]:
        with self._read() as session:
            return [self._user_json(u) for u in session.scalars(select(User).order_by(User.name))]

    def login(self, name: str, password: str) -> Principal | None:
        """A principal for a correct password; None otherwise (same answer for unknown users)."""
        with self._read() as session:
            user = session.scalar(select(User).where(User.name == name, User.disabled.is_(False)))
            stored = user.password_hash if user else None
            try:
                _hasher.verify(stored or _DUMMY_HASH, password)
            except (VerificationError, InvalidHashError):
                return None
            return self._principal(session, user) if user and stored else None

    def create_token(self, user_name: str, label: str = "token", expires_days: int | None = 90) -> str:
        """A new bearer token for the user; only its digest is kept, so this is the one time it exists."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.writing() as session:
            user = self._user(session, user_name)
            expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
            session.add(ApiToken(user_id=user.id, label=label, token_sha256=token_digest(token), expires_at=expires))
        return token

    def revoke_token(self, token: str) -> bool:
        with self.writing() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_digest(token)))
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at = datetime.now(UTC)
            return True

    def principal_for_token(self, token: str) -> Principal | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self._read() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_digest(token)))
            if row is None or row.revoked_at is not None or row.user.disabled:
                return None
            if row.expires_at is not None and _aware(row.expires_at) <= datetime.now(UTC):
                return None
            return self._principal(session, row.user)

    def principal_for_identity(self, identity: Identity) -> Principal:
        """The principal of a verified OIDC identity; first sight creates it as a researcher."""
        with self.writing() as session:
            user = session.scalar(select(User).where(User.oidc_issuer == identity.issuer,
                                                     User.oidc_subject == identity.subject))
            if user is None:
                name = identity.name
                if session.scalar(select(User).where(User.name == name)) is not None:
                    name = f"{identity.name}@{identity.issuer}"[:NAME_LIMIT]
                user = User(name=name, role="researcher", oidc_issuer=identity.issuer, oidc_subject=identity.subject)
                session.add(user)
                session.flush()
            if user.disabled:
                raise NotAllowed("this account is disabled")
            principal = self._principal(session, user)
        now = datetime.now(UTC)
        visas = {dataset: f"visa:{identity.issuer}" for dataset, until in identity.dataset_visas.items() if until > now}
        if not visas or principal.readable is None:
            return principal
        return replace(principal, readable=principal.readable | frozenset(visas), grants={**visas, **principal.grants})

    def principal_for_user(self, name: str) -> Principal:
        with self._read() as session:
            user = self._user(session, name)
            if user.disabled:
                raise NotAllowed("this account is disabled")
            return self._principal(session, user)

    def principal_for_requester(self, name: str) -> Principal | None:
        """Who a job runs as: the node's operator (the command line on the node, reads everything)
        or a user, with their grants as they are *now*; None for an unknown or disabled user."""
        if name == OPERATOR:
            return Principal(OPERATOR, "administrator", None, None)
        try:
            return self.principal_for_user(name)
        except AccessError:
            return None

    def notify_stewards(self, dataset: str, message: str) -> int:
        """A notice to each data steward of a dataset (or, with none, each administrator)."""
        with self.writing() as session:
            users = list(session.scalars(
                select(DatasetSteward.user_id).join(Dataset, Dataset.id == DatasetSteward.dataset_id)
                .where(Dataset.alias == dataset)))
            if not users:
                users = list(session.scalars(select(User.id).where(User.role == "administrator")))
            for user_id in users:
                session.add(Notification(user_id=user_id, message=message))
            return len(users)

    def anonymous(self) -> Principal:
        with self._read() as session:
            return Principal("anonymous", readable=frozenset(self._open_datasets(session)))

    # --- datasets, committees ------------------------------------------------------------------

    def create_dataset(
        self, name: str, policy_text: str, duo_codes: list[str] | None = None, title: str | None = None,
        organisation: str | None = None, exist_ok: bool = False,
    ) -> dict:
        """A dataset under its own policy (free text + GA4GH DUO codes, e.g. DUO:0000007)."""
        with self.writing() as session:
            existing = session.scalar(select(Dataset).where(Dataset.alias == name))
            if existing is not None and exist_ok:
                return {"name": name, "policy": existing.policy.description, "existed": True,
                        "duo": existing.policy.codes,
                        "open": self._is_open(existing.policy)}
            if existing is not None:
                raise AccessError(f"dataset {name!r} exists already")
            codes = [c.strip().upper() for c in duo_codes or []]
            if bad := [c for c in codes if not (c.startswith("DUO:") and c[4:].isdigit() and len(c) == 11)]:
                raise AccessError(f"not GA4GH DUO codes: {', '.join(bad)} (e.g. DUO:0000042)")
            policy = Policy(alias=f"{name}-policy", name=f"Policy of {name}", description=policy_text,
                            data_use=[{"code": c, "scheme": "DUO"} for c in codes])
            org_alias = organisation or "local"
            org = session.scalar(select(Organisation).where(Organisation.alias == org_alias))
            if org is None:
                org = Organisation(alias=org_alias, name=org_alias)
            dataset = Dataset(alias=name, title=title or name, short_name=name[:64], policy=policy, organisation=org)
            session.add(dataset)
            session.flush()
            return {"name": name, "policy": policy_text, "duo": codes, "open": self._is_open(policy)}

    def add_committee_member(self, dataset: str, user_name: str) -> None:
        with self.writing() as session:
            session.add(CommitteeMember(dataset_id=self._dataset(session, dataset).id,
                                        user_id=self._user(session, user_name).id))

    def add_steward(self, dataset: str, user_name: str) -> None:
        with self.writing() as session:
            session.add(DatasetSteward(dataset_id=self._dataset(session, dataset).id,
                                       user_id=self._user(session, user_name).id))

    # --- requests and grants -------------------------------------------------------------------

    def request_access(self, user_name: str, dataset: str, purpose: str, project: str | None = None) -> str:
        if not purpose.strip():
            raise AccessError("say what the data will be used for (purpose)")
        with self.writing() as session:
            user, target = self._user(session, user_name), self._dataset(session, dataset)
            request = AccessRequest(user_id=user.id, dataset_id=target.id, purpose=purpose.strip(), project=project)
            session.add(request)
            for member in session.scalars(select(CommitteeMember).where(CommitteeMember.dataset_id == target.id)):
                session.add(Notification(user_id=member.user_id,
                                         message=f"{user.name} asks for access to {dataset}: {purpose.strip()}"))
            session.flush()
            request_id = request.uuid
        self._audit.record(user_name, "access.request", dataset=dataset, detail={"request": request_id})
        return request_id

    def approve(self, request_uuid: str, decider: Principal, expires: date) -> str:
        if expires <= datetime.now(UTC).date():
            raise AccessError("the expiry date must be in the future")
        with self.writing() as session:
            request = self._pending(session, request_uuid, decider)
            request.status, request.decided_by_id, request.decided_at = "approved", decider.user_id, datetime.now(UTC)
            grant = Grant(user_id=request.user_id, dataset_id=request.dataset_id, request_id=request.id,
                          granted_by_id=decider.user_id,
                          expires_at=datetime.combine(expires, time.max, tzinfo=UTC))
            session.add(grant)
            session.add(Notification(user_id=request.user_id,
                                     message=f"Access to {request.dataset.alias} approved until {expires.isoformat()}"))
            session.flush()
            grant_id = grant.uuid
        self._audit.record(decider.name, "access.approve",
                           detail={"request": request_uuid, "grant": grant_id, "expires": expires.isoformat()})
        return grant_id

    def reject(self, request_uuid: str, decider: Principal, reason: str) -> None:
        if not reason.strip():
            raise AccessError("give the requester a reason")
        with self.writing() as session:
            request = self._pending(session, request_uuid, decider)
            request.status, request.reason = "rejected", reason.strip()
            request.decided_by_id, request.decided_at = decider.user_id, datetime.now(UTC)
            session.add(Notification(user_id=request.user_id,
                                     message=f"Access to {request.dataset.alias} rejected: {reason.strip()}"))
        self._audit.record(decider.name, "access.reject", detail={"request": request_uuid, "reason": reason})

    def revoke(self, grant_or_request_uuid: str, decider: Principal) -> str:
        """Revoke a grant (or the grant of an approved request); returns the grant's uuid."""
        with self.writing() as session:
            grant = session.scalar(select(Grant).where(Grant.uuid == grant_or_request_uuid))
            if grant is None:
                request = session.scalar(select(AccessRequest).where(AccessRequest.uuid == grant_or_request_uuid))
                grant = session.scalar(select(Grant).where(Grant.request_id == request.id)) if request else None
            if grant is None:
                raise AccessError(f"no grant or request {grant_or_request_uuid!r}")
            if not decider.decides_for(grant.dataset.alias):
                raise NotAllowed("only the dataset's access committee can revoke its grants")
            if grant.revoked_at is None:
                grant.revoked_at = datetime.now(UTC)
                if grant.request_id is not None:
                    request = session.get(AccessRequest, grant.request_id)
                    if request is not None:
                        request.status = "revoked"
                session.add(Notification(user_id=grant.user_id, message=f"Access to {grant.dataset.alias} revoked"))
            grant_id = grant.uuid
        self._audit.record(decider.name, "access.revoke", detail={"grant": grant_id})
        return grant_id

    def requests(self, principal: Principal) -> list[dict]:
        """The requests a principal filed, and those it decides on."""
        with self._read() as session:
            rows = session.scalars(select(AccessRequest).order_by(AccessRequest.created_at))
            return [self._request_json(r) for r in rows
                    if r.user_id == principal.user_id or principal.decides_for(r.dataset.alias)]

    def notifications(self, principal: Principal) -> list[dict]:
        with self._read() as session:
            rows = session.scalars(select(Notification).where(Notification.user_id == principal.user_id)
                                   .order_by(Notification.id))
            return [{"message": n.message, "at": n.created_at.isoformat()} for n in rows]

    # --- the optional way back from pseudonyms --------------------------------------------------

    def remember_pseudonym(self, pseudonym: str, identifier: str, keys: NodeKeys) -> None:
        """Keep `identifier` sealed to the node key (only where the node is configured to)."""
        with self.writing() as session:
            if session.scalar(select(PseudonymEntry.id).where(PseudonymEntry.pseudonym == pseudonym)) is None:
                session.add(PseudonymEntry(pseudonym=pseudonym, sealed_identifier=seal(identifier.encode(), keys)))

    def reveal_pseudonym(self, pseudonym: str, keys: NodeKeys) -> str:
        with self._read() as session:
            sealed = session.scalar(select(PseudonymEntry.sealed_identifier)
                                    .where(PseudonymEntry.pseudonym == pseudonym))
        if sealed is None:
            raise AccessError(f"no way back is kept for {pseudonym!r}")
        return unseal(sealed, keys).decode()

    def forget_pseudonym(self, pseudonym: str) -> None:
        with self.writing() as session:
            session.execute(delete(PseudonymEntry).where(PseudonymEntry.pseudonym == pseudonym))

    # --- internals -----------------------------------------------------------------------------

    def _principal(self, session: Session, user: User) -> Principal:
        now = datetime.now(UTC)
        committees = frozenset(session.scalars(
            select(Dataset.alias).join(CommitteeMember, CommitteeMember.dataset_id == Dataset.id)
            .where(CommitteeMember.user_id == user.id)))
        if user.role == "administrator":
            return Principal(user.name, user.role, user.id, None, {}, committees)
        grants = {
            grant.dataset.alias: grant.uuid
            for grant in session.scalars(select(Grant).where(Grant.user_id == user.id, Grant.revoked_at.is_(None)))
            if _aware(grant.expires_at) > now
        }
        stewarded = set(session.scalars(
            select(Dataset.alias).join(DatasetSteward, DatasetSteward.dataset_id == Dataset.id)
            .where(DatasetSteward.user_id == user.id)))
        readable = frozenset(self._open_datasets(session)) | frozenset(grants) | stewarded
        return Principal(user.name, user.role, user.id, readable, grants, committees, frozenset(stewarded))

    def _open_datasets(self, session: Session) -> list[str]:
        rows = session.execute(select(Dataset.alias, Policy).join(Policy, Policy.id == Dataset.policy_id))
        return [alias for alias, policy in rows if self._is_open(policy)]

    @staticmethod
    def _is_open(policy: Policy) -> bool:
        """Open data: the policy carries GA4GH DUO "no restriction" (NRES)."""
        return NO_RESTRICTION["code"] in policy.codes

    def _pending(self, session: Session, request_uuid: str, decider: Principal) -> AccessRequest:
        request = session.scalar(select(AccessRequest).where(AccessRequest.uuid == request_uuid))
        if request is None:
            raise AccessError(f"no access request {request_uuid!r}")
        if not decider.decides_for(request.dataset.alias):
            raise NotAllowed("only the dataset's access committee decides its requests")
        if request.status != "pending":
            raise AccessError(f"request {request_uuid} is already {request.status}")
        return request

    @staticmethod
    def _user(session: Session, name: str) -> User:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise AccessError(f"no user {name!r}")
        return user

    @staticmethod
    def _dataset(session: Session, name: str) -> Dataset:
        dataset = session.scalar(select(Dataset).where(Dataset.alias == name))
        if dataset is None:
            raise AccessError(f"no dataset {name!r}")
        return dataset

    @staticmethod
    def _user_json(user: User) -> dict[str, Any]:
        return {"name": user.name, "role": user.role, "uuid": user.uuid,
                "organisation": user.organisation.alias if user.organisation else None}

    @staticmethod
    def _request_json(request: AccessRequest) -> dict[str, Any]:
        return {"id": request.uuid, "user": request.user.name, "dataset": request.dataset.alias,
                "purpose": request.purpose, "project": request.project, "status": request.status,
                "reason": request.reason, "created_at": request.created_at.isoformat()}


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# Verifying against a fixed hash for unknown users keeps login time independent of whether the name exists.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
