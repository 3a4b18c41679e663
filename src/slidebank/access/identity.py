"""Who someone is: accounts, passwords, API tokens, browser sessions and OIDC identities, and the
principal each resolves to.

Names are namespaced so the audit can always tell people apart: local accounts have plain names
(never a reserved one such as `operator`, never with '@'), identities from an identity provider are
`name@issuer-host`, and the node's command line is the reserved `operator`. Every change to an
account, token or session bumps the governance version in the same transaction, so it takes
effect on the next request in every process, and is audited in that transaction too.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from slidebank.access import version
from slidebank.access.errors import AccessError, NotAllowed, NotFound, TooManyAttempts
from slidebank.access.lookup import require_administrator, user_named
from slidebank.access.oidc import Identity
from slidebank.access.principal import RESERVED_NAMES, Principal, anonymous, operator
from slidebank.audit import AuditLog
from slidebank.db import UnitOfWork
from slidebank.db.models import (
    ROLES,
    ApiToken,
    BrowserSession,
    CommitteeMember,
    Dataset,
    DatasetSteward,
    Grant,
    LoginFailure,
    Organisation,
    Policy,
    User,
)
from slidebank.db.models.base import aware

TOKEN_PREFIX = "sbk_"
NAME_LIMIT = 128
MAX_TOKEN_DAYS = 365
SESSION_HOURS = 12
LOGIN_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_ACCOUNT = 5  # then the account waits out the window (from wherever it is tried)
MAX_FAILURES_PER_ADDRESS = 20  # then the address waits (guessing many names from one place)
NO_RESTRICTION = "DUO:0000004"
_hasher = PasswordHasher()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_open(policy: Policy) -> bool:
    """Open data: the policy carries GA4GH DUO "no restriction" (NRES)."""
    return NO_RESTRICTION in policy.codes


def open_datasets(session: Session) -> frozenset[str]:
    rows = session.execute(select(Dataset.alias, Policy).join(Policy, Policy.id == Dataset.policy_id))
    return frozenset(alias for alias, policy in rows if is_open(policy))


def check_local_name(name: str) -> None:
    if not name or len(name) > NAME_LIMIT or not name.isprintable() or name != name.strip():
        raise AccessError("a user name is 1-128 printable characters, without surrounding spaces")
    if "@" in name or name.lower() in RESERVED_NAMES:
        raise AccessError(f"{name!r} is reserved: local names have no '@' and are not one of "
                          f"{', '.join(sorted(RESERVED_NAMES))}")


class Identities:
    def __init__(self, uow: UnitOfWork, audit: AuditLog) -> None:
        self._uow = uow
        self._audit = audit

    # --- accounts ---------------------------------------------------------------------------------

    def add_user(self, actor: Principal, name: str, role: str, organisation: str | None = None,
                 password: str | None = None) -> dict[str, Any]:
        if role not in ROLES:
            raise AccessError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        check_local_name(name)
        with self._uow.write() as session:
            if session.scalar(select(User.id).where(func.lower(User.name) == name.lower())) is not None:
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
            self._audit.append(session, actor.name, "user.add", detail={"user": name, "role": role})
            return self._user_json(user)

    def list_users(self) -> list[dict[str, Any]]:
        with self._uow.read() as session:
            return [self._user_json(u) for u in session.scalars(select(User).order_by(User.name))]

    def has_users(self) -> bool:
        with self._uow.read() as session:
            return session.scalar(select(User.id).limit(1)) is not None

    def set_disabled(self, actor: Principal, name: str, disabled: bool) -> dict[str, Any]:
        """Disable (or enable) an account: its tokens and sessions stop working on the next request."""
        require_administrator(actor, "do this for another user")
        with self._uow.write() as session:
            user = user_named(session, name)
            user.disabled = disabled
            version.bump(session)
            self._audit.append(session, actor.name, "user.disable" if disabled else "user.enable",
                               detail={"user": name})
            return self._user_json(user)

    # --- passwords and browser sessions -------------------------------------------------------------

    def login(self, name: str, password: str, address: str) -> tuple[Principal, str, str]:
        """(principal, session token, CSRF token) for a correct password; AccessError otherwise, the
        same for unknown users. Failures count per account and per address; past the limit,
        TooManyAttempts until the window has passed, whatever the password."""
        now = datetime.now(UTC)
        with self._uow.write() as session:
            self._check_rate(session, name, address, now)
            user = session.scalar(select(User).where(User.name == name, User.disabled.is_(False)))
            stored = user.password_hash if user else None
            try:
                _hasher.verify(stored or _dummy_hash(), password)
                verified = user is not None and stored is not None
            except (VerificationError, InvalidHashError):
                verified = False
            if not verified or user is None:
                session.add(LoginFailure(name=name[:NAME_LIMIT], address=address[:64], at=now))
                if user is not None:  # failures against unknown names are counted, not audited
                    self._audit.append(session, user.name, "login.failed", detail={"address": address[:64]})
                failed = True
            else:
                failed = False
                token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
                session.add(BrowserSession(token_sha256=token_digest(token), user_id=user.id, csrf=csrf,
                                           expires_at=now + timedelta(hours=SESSION_HOURS)))
                session.execute(delete(LoginFailure).where(LoginFailure.name == name))
                self._audit.append(session, user.name, "login", detail={"address": address[:64]})
                principal = self._principal(session, user, now + timedelta(hours=SESSION_HOURS))
        if failed:
            raise AccessError("wrong name or password")
        return principal, token, csrf

    def _check_rate(self, session: Session, name: str, address: str, now: datetime) -> None:
        since = now - LOGIN_WINDOW
        session.execute(delete(LoginFailure).where(LoginFailure.at < since))
        for column, value, limit in ((LoginFailure.name, name, MAX_FAILURES_PER_ACCOUNT),
                                     (LoginFailure.address, address, MAX_FAILURES_PER_ADDRESS)):
            failures = session.execute(
                select(func.count(), func.min(LoginFailure.at)).where(column == value, LoginFailure.at >= since)
            ).one()
            if failures[0] >= limit:
                retry = aware(failures[1]) + LOGIN_WINDOW - now
                raise TooManyAttempts(max(1, int(retry.total_seconds()) + 1))

    def session_principal(self, token: str) -> tuple[Principal, str] | None:
        """The principal of a live browser session and its CSRF token; None if ended or expired."""
        now = datetime.now(UTC)
        with self._uow.read() as session:
            row = session.scalar(select(BrowserSession).where(BrowserSession.token_sha256 == token_digest(token)))
            if row is None or row.ended_at is not None or aware(row.expires_at) <= now or row.user.disabled:
                return None
            return self._principal(session, row.user, aware(row.expires_at)), row.csrf

    def end_session(self, token: str) -> None:
        """Log out: this session ends now, in every process."""
        with self._uow.write() as session:
            row = session.scalar(select(BrowserSession).where(BrowserSession.token_sha256 == token_digest(token)))
            if row is None or row.ended_at is not None:
                return
            row.ended_at = datetime.now(UTC)
            version.bump(session)
            self._audit.append(session, row.user.name, "logout")

    def end_sessions(self, actor: Principal, name: str) -> int:
        """Log a user out everywhere (the user, or an administrator for anyone)."""
        if actor.name != name:
            require_administrator(actor, "do this for another user")
        with self._uow.write() as session:
            user = user_named(session, name)
            result = session.execute(
                update(BrowserSession).where(BrowserSession.user_id == user.id, BrowserSession.ended_at.is_(None))
                .values(ended_at=datetime.now(UTC))
            )
            ended = getattr(result, "rowcount", 0) or 0
            version.bump(session)
            self._audit.append(session, actor.name, "sessions.end", detail={"user": name, "sessions": ended})
            return int(ended)

    # --- API tokens -----------------------------------------------------------------------------------

    def create_token(self, actor: Principal, user_name: str, label: str = "token",
                     expires_days: int = 90) -> tuple[str, dict[str, Any]]:
        """A new bearer token for the user (at most a year); only its digest is kept, so this is the
        one time it exists. Returns the token and its listing entry."""
        if not 1 <= expires_days <= MAX_TOKEN_DAYS:
            raise AccessError(f"a token lasts 1 to {MAX_TOKEN_DAYS} days")
        if actor.name != user_name:
            require_administrator(actor, "do this for another user")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._uow.write() as session:
            user = user_named(session, user_name)
            row = ApiToken(user_id=user.id, label=label[:NAME_LIMIT], token_sha256=token_digest(token),
                           expires_at=datetime.now(UTC) + timedelta(days=expires_days))
            session.add(row)
            session.flush()
            self._audit.append(session, actor.name, "token.create",
                               detail={"user": user_name, "label": row.label, "days": expires_days,
                                       "token": row.token_sha256[:12]})
            return token, self._token_json(row)

    def list_tokens(self, actor: Principal, user_name: str | None = None) -> list[dict[str, Any]]:
        """Tokens (never the secrets) of one user, or of everyone for an administrator."""
        name = user_name or actor.name
        if name != actor.name or user_name is None and not actor.user_id:
            require_administrator(actor, "do this for another user")
        with self._uow.read() as session:
            statement = select(ApiToken).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id)
            if user_name is not None or actor.user_id:
                statement = statement.where(User.name == name)
            return [self._token_json(row) for row in session.scalars(statement)]

    def revoke_token(self, actor: Principal, token_id: str) -> dict[str, Any]:
        """Revoke a token by its id (the first 12 hex digits of its digest, as listed) or by itself."""
        digest = token_digest(token_id) if token_id.startswith(TOKEN_PREFIX) else token_id.lower()
        if len(digest) < 12:
            raise AccessError("name a token by the id `tokens list` shows (12 characters or more)")
        with self._uow.write() as session:
            rows = list(session.scalars(select(ApiToken).where(ApiToken.token_sha256.startswith(digest))))
            mine = [r for r in rows if r.user.name == actor.name or actor.is_administrator]
            if not mine:  # a stranger's token answers like a missing one
                raise NotFound(f"no token {token_id[:16]!r}")
            if len(mine) > 1:
                raise AccessError("that id names several tokens; give more of it")
            row = mine[0]
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
                version.bump(session)
                self._audit.append(session, actor.name, "token.revoke",
                                   detail={"user": row.user.name, "token": row.token_sha256[:12]})
            return self._token_json(row)

    def principal_for_token(self, token: str) -> Principal | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        now = datetime.now(UTC)
        with self._uow.read() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_digest(token)))
            if row is None or row.revoked_at is not None or row.user.disabled:
                return None
            if row.expires_at is not None and aware(row.expires_at) <= now:
                return None
            return self._principal(session, row.user, aware(row.expires_at) if row.expires_at else None)

    # --- identities from an identity provider ---------------------------------------------------------

    def principal_for_identity(self, identity: Identity) -> Principal:
        """The principal of a verified OIDC identity; first sight creates it as a researcher named
        `name@issuer-host` (never a local or reserved name), unique per subject."""
        with self._uow.write() as session:
            user = session.scalar(select(User).where(User.oidc_issuer == identity.issuer,
                                                     User.oidc_subject == identity.subject))
            if user is None:
                user = User(name=self._external_name(session, identity), role="researcher",
                            oidc_issuer=identity.issuer, oidc_subject=identity.subject)
                session.add(user)
                session.flush()
                self._audit.append(session, user.name, "user.add",
                                   detail={"user": user.name, "role": "researcher", "issuer": identity.issuer})
            if user.disabled:
                raise NotAllowed("this account is disabled")
            principal = self._principal(session, user, None)
        now = datetime.now(UTC)
        live = {dataset: until for dataset, until in identity.dataset_visas.items() if until > now}
        if not live or principal.readable is None:
            return principal
        visas = {dataset: f"visa:{identity.visa_issuers.get(dataset, identity.issuer)}" for dataset in live}
        first_expiry = min([*live.values(), *([principal.valid_until] if principal.valid_until else [])])
        return replace(principal, readable=principal.readable | frozenset(visas), grants={**visas, **principal.grants},
                       valid_until=first_expiry)

    @staticmethod
    def _external_name(session: Session, identity: Identity) -> str:
        host = urlsplit(identity.issuer).hostname or identity.issuer
        base = "".join(c for c in identity.name if c.isprintable() and c not in "@\n\r")[:64] or "user"
        name = f"{base}@{host}"[:NAME_LIMIT]
        if session.scalar(select(User.id).where(func.lower(User.name) == name.lower())) is not None:
            suffix = hashlib.sha256(f"{identity.issuer}\n{identity.subject}".encode()).hexdigest()[:10]
            name = f"{base}#{suffix}@{host}"[:NAME_LIMIT]
        return name

    # --- principals -----------------------------------------------------------------------------------

    def principal_for_user(self, name: str) -> Principal:
        with self._uow.read() as session:
            user = user_named(session, name)
            if user.disabled:
                raise NotAllowed("this account is disabled")
            return self._principal(session, user, None)

    def principal_for_requester(self, name: str) -> Principal | None:
        """Who a job runs as: the node's operator or a user, with their grants as they are *now*;
        None for an unknown or disabled user."""
        if name == operator().name:
            return operator()
        try:
            return self.principal_for_user(name)
        except AccessError:
            return None

    def anonymous(self) -> Principal:
        with self._uow.read() as session:
            return anonymous(open_datasets(session))

    def _principal(self, session: Session, user: User, credential_expiry: datetime | None) -> Principal:
        now = datetime.now(UTC)
        committees = frozenset(session.scalars(
            select(Dataset.alias).join(CommitteeMember, CommitteeMember.dataset_id == Dataset.id)
            .where(CommitteeMember.user_id == user.id)))
        if user.role == "administrator":
            return Principal(user.name, user.role, user.id, None, {}, committees, valid_until=credential_expiry)
        live = [
            (grant.dataset.alias, grant.uuid, aware(grant.expires_at))
            for grant in session.scalars(select(Grant).where(Grant.user_id == user.id, Grant.revoked_at.is_(None)))
            if aware(grant.expires_at) > now
        ]
        stewarded = frozenset(session.scalars(
            select(Dataset.alias).join(DatasetSteward, DatasetSteward.dataset_id == Dataset.id)
            .where(DatasetSteward.user_id == user.id)))
        grants = {dataset: uuid for dataset, uuid, _ in live}
        expiries = [until for _, _, until in live] + ([credential_expiry] if credential_expiry else [])
        readable = open_datasets(session) | frozenset(grants) | stewarded
        return Principal(user.name, user.role, user.id, readable, grants, committees, stewarded,
                         min(expiries) if expiries else None)

    # --- helpers --------------------------------------------------------------------------------------

    @staticmethod
    def _user_json(user: User) -> dict[str, Any]:
        return {"name": user.name, "role": user.role, "uuid": user.uuid, "disabled": bool(user.disabled),
                "organisation": user.organisation.alias if user.organisation else None,
                "identity_provider": user.oidc_issuer}

    @staticmethod
    def _token_json(row: ApiToken) -> dict[str, Any]:
        return {"id": row.token_sha256[:12], "user": row.user.name, "label": row.label,
                "created_at": aware(row.created_at).isoformat(),
                "expires_at": aware(row.expires_at).isoformat() if row.expires_at else None,
                "revoked_at": aware(row.revoked_at).isoformat() if row.revoked_at else None}


@cache
def _dummy_hash() -> str:
    """Verifying against a fixed hash for unknown users keeps log-in time independent of whether the
    name exists (made on first use: hashing costs a third of a second, too much for every command)."""
    return _hasher.hash(secrets.token_urlsafe(16))
