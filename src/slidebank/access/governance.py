"""Who decides, and the decisions: datasets under policies, committees, stewards, access requests,
grants and their revocation.

Each change commits with its audit entry, its notices and a governance-version bump in one
transaction, so a grant opens access — and a revocation closes it — on the next request everywhere.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from slidebank.access import version
from slidebank.access.errors import AccessError, NotAllowed, NotFound
from slidebank.access.identity import is_open
from slidebank.access.lookup import dataset_named, require_administrator, user_named
from slidebank.access.notifications import notify
from slidebank.access.principal import Principal
from slidebank.audit import AuditLog
from slidebank.db import UnitOfWork
from slidebank.db.models import (
    AccessRequest,
    CommitteeMember,
    Dataset,
    DatasetSteward,
    Grant,
    Organisation,
    Policy,
)
from slidebank.db.models.base import iso_utc

DATASET_CHANGES = "change datasets, their policies and their committees"
DEFAULT_MAX_GRANT_DAYS = 365  # a policy may set its own; no grant outlives it
MAX_GRANT_DAYS = 5 * 365


def _duo_codes(codes: list[str]) -> list[str]:
    cleaned = [c.strip().upper() for c in codes]
    if bad := [c for c in cleaned if not (c.startswith("DUO:") and c[4:].isdigit() and len(c) == 11)]:
        raise AccessError(f"not GA4GH DUO codes: {', '.join(bad)} (e.g. DUO:0000042)")
    return cleaned


class Governance:
    def __init__(self, uow: UnitOfWork, audit: AuditLog) -> None:
        self._uow = uow
        self._audit = audit

    # --- datasets, policies, committees -----------------------------------------------------------

    def create_dataset(
        self, actor: Principal, name: str, policy_text: str, duo_codes: list[str] | None = None,
        title: str | None = None, organisation: str | None = None, exist_ok: bool = False,
        max_grant_days: int | None = None,
    ) -> dict[str, Any]:
        """A dataset under its own policy (free text + GA4GH DUO codes, e.g. DUO:0000007)."""
        require_administrator(actor, DATASET_CHANGES)
        codes = _duo_codes(duo_codes or [])
        if max_grant_days is not None and not 1 <= max_grant_days <= MAX_GRANT_DAYS:
            raise AccessError(f"grants last 1 to {MAX_GRANT_DAYS} days")
        with self._uow.write() as session:
            existing = session.scalar(select(Dataset).where(Dataset.alias == name))
            if existing is not None and exist_ok:
                return {"name": name, "policy": existing.policy.description, "existed": True,
                        "duo": existing.policy.codes, "open": is_open(existing.policy)}
            if existing is not None:
                raise AccessError(f"dataset {name!r} exists already")
            policy = Policy(alias=f"{name}-policy", name=f"Policy of {name}", description=policy_text,
                            data_use=[{"code": c, "scheme": "DUO"} for c in codes], max_grant_days=max_grant_days)
            org_alias = organisation or "local"
            org = session.scalar(select(Organisation).where(Organisation.alias == org_alias))
            if org is None:
                org = Organisation(alias=org_alias, name=org_alias)
            session.add(Dataset(alias=name, title=title or name, short_name=name[:64], policy=policy, organisation=org))
            session.flush()
            version.bump(session)  # an open dataset changes what everyone may read
            self._audit.append(session, actor.name, "dataset.create", dataset=name,
                               detail={"policy": policy_text, "duo": codes})
            return {"name": name, "policy": policy_text, "duo": codes, "open": is_open(policy)}

    def set_policy(self, actor: Principal, name: str, policy_text: str | None = None,
                   duo_codes: list[str] | None = None, max_grant_days: int | None = None) -> dict[str, Any]:
        """Change a dataset's terms; opening or closing it takes effect on the next request."""
        require_administrator(actor, DATASET_CHANGES)
        with self._uow.write() as session:
            policy = dataset_named(session, name).policy
            if policy_text is not None:
                policy.description = policy_text
            if duo_codes is not None:
                policy.data_use = [{"code": c, "scheme": "DUO"} for c in _duo_codes(duo_codes)]
            if max_grant_days is not None:
                if not 1 <= max_grant_days <= MAX_GRANT_DAYS:
                    raise AccessError(f"grants last 1 to {MAX_GRANT_DAYS} days")
                policy.max_grant_days = max_grant_days
            version.bump(session)
            self._audit.append(session, actor.name, "dataset.policy", dataset=name,
                               detail={"policy": policy.description, "duo": policy.codes,
                                       "max_grant_days": policy.max_grant_days})
            return {"name": name, "policy": policy.description, "duo": policy.codes, "open": is_open(policy),
                    "max_grant_days": policy.max_grant_days or DEFAULT_MAX_GRANT_DAYS}

    def add_committee_member(self, actor: Principal, dataset: str, user_name: str) -> None:
        self._add_role(actor, CommitteeMember, "committee.add", dataset, user_name)

    def add_steward(self, actor: Principal, dataset: str, user_name: str) -> None:
        self._add_role(actor, DatasetSteward, "steward.add", dataset, user_name)

    def _add_role(self, actor: Principal, model: type[CommitteeMember] | type[DatasetSteward], action: str,
                  dataset: str, user_name: str) -> None:
        require_administrator(actor, DATASET_CHANGES)
        with self._uow.write() as session:
            target, user = dataset_named(session, dataset), user_named(session, user_name)
            if session.scalar(select(model.id).where(model.dataset_id == target.id, model.user_id == user.id)):
                return
            session.add(model(dataset_id=target.id, user_id=user.id))
            version.bump(session)
            self._audit.append(session, actor.name, action, dataset=dataset, detail={"user": user_name})

    # --- requests and grants -----------------------------------------------------------------------

    def request_access(self, requester: Principal, dataset: str, purpose: str, project: str | None = None) -> str:
        if not purpose.strip():
            raise AccessError("say what the data will be used for (purpose)")
        with self._uow.write() as session:
            user, target = user_named(session, requester.name), dataset_named(session, dataset)
            request = AccessRequest(user_id=user.id, dataset_id=target.id, purpose=purpose.strip(), project=project)
            session.add(request)
            for member in session.scalars(select(CommitteeMember).where(CommitteeMember.dataset_id == target.id)):
                notify(session, member.user_id, f"{user.name} asks for access to {dataset}: {purpose.strip()}")
            session.flush()
            self._audit.append(session, requester.name, "access.request", dataset=dataset,
                               detail={"request": request.uuid})
            return request.uuid

    def approve(self, request_uuid: str, decider: Principal, expires: date) -> str:
        """Approve until the end of `expires` (UTC). Another committee member decides a member's own
        request (four eyes), and no grant outlives the dataset policy's longest grant."""
        today = datetime.now(UTC).date()
        if expires <= today:
            raise AccessError("the expiry date must be in the future")
        with self._uow.write() as session:
            request = self._pending(session, request_uuid, decider)
            longest = request.dataset.policy.max_grant_days or DEFAULT_MAX_GRANT_DAYS
            if expires > today + timedelta(days=longest):
                raise AccessError(f"the policy of {request.dataset.alias} allows grants of at most {longest} days "
                                  f"(until {(today + timedelta(days=longest)).isoformat()})")
            request.status, request.decided_by_id, request.decided_at = "approved", decider.user_id, datetime.now(UTC)
            grant = Grant(user_id=request.user_id, dataset_id=request.dataset_id, request_id=request.id,
                          granted_by_id=decider.user_id, expires_at=datetime.combine(expires, time.max, tzinfo=UTC))
            session.add(grant)
            notify(session, request.user_id,
                   f"Access to {request.dataset.alias} approved until {expires.isoformat()}")
            session.flush()
            version.bump(session)
            self._audit.append(session, decider.name, "access.approve", dataset=request.dataset.alias,
                               grant=grant.uuid, detail={"request": request_uuid, "grant": grant.uuid,
                                                         "user": request.user.name, "expires": expires.isoformat()})
            return grant.uuid

    def reject(self, request_uuid: str, decider: Principal, reason: str) -> None:
        if not reason.strip():
            raise AccessError("give the requester a reason")
        with self._uow.write() as session:
            request = self._pending(session, request_uuid, decider)
            request.status, request.reason = "rejected", reason.strip()
            request.decided_by_id, request.decided_at = decider.user_id, datetime.now(UTC)
            notify(session, request.user_id, f"Access to {request.dataset.alias} rejected: {reason.strip()}")
            self._audit.append(session, decider.name, "access.reject", dataset=request.dataset.alias,
                               detail={"request": request_uuid, "user": request.user.name, "reason": reason})

    def revoke(self, grant_or_request_uuid: str, decider: Principal) -> str:
        """Revoke a grant (or the grant of an approved request); returns the grant's uuid. A grant the
        decider may not revoke answers exactly like one that does not exist."""
        with self._uow.write() as session:
            grant = session.scalar(select(Grant).where(Grant.uuid == grant_or_request_uuid))
            if grant is None:
                request = session.scalar(select(AccessRequest).where(AccessRequest.uuid == grant_or_request_uuid))
                grant = session.scalar(select(Grant).where(Grant.request_id == request.id)) if request else None
            if grant is None or not decider.decides_for(grant.dataset.alias):
                raise NotFound(f"no grant or request {grant_or_request_uuid!r} that you decide on")
            if grant.revoked_at is None:
                grant.revoked_at = datetime.now(UTC)
                if grant.request_id is not None:
                    request = session.get(AccessRequest, grant.request_id)
                    if request is not None:
                        request.status = "revoked"
                notify(session, grant.user_id, f"Access to {grant.dataset.alias} revoked")
                version.bump(session)
                self._audit.append(session, decider.name, "access.revoke", dataset=grant.dataset.alias,
                                   grant=grant.uuid, detail={"grant": grant.uuid})
            return grant.uuid

    def requests(self, principal: Principal) -> list[dict[str, Any]]:
        """The requests a principal filed, and those it decides on."""
        with self._uow.read() as session:
            rows = session.scalars(select(AccessRequest).order_by(AccessRequest.created_at))
            return [self._request_json(r) for r in rows
                    if (r.user_id == principal.user_id and principal.user_id is not None)
                    or principal.decides_for(r.dataset.alias)]

    # --- internals ---------------------------------------------------------------------------------

    def _pending(self, session: Session, request_uuid: str, decider: Principal) -> AccessRequest:
        request = session.scalar(select(AccessRequest).where(AccessRequest.uuid == request_uuid))
        if request is None or not decider.decides_for(request.dataset.alias):
            raise NotFound(f"no access request {request_uuid!r} that you decide on")
        if request.user_id == decider.user_id:
            raise NotAllowed("another member of the committee must decide your own request (four eyes)")
        if request.status != "pending":
            raise AccessError(f"request {request_uuid} is already {request.status}")
        return request

    @staticmethod
    def _request_json(request: AccessRequest) -> dict[str, Any]:
        return {"id": request.uuid, "user": request.user.name, "dataset": request.dataset.alias,
                "purpose": request.purpose, "project": request.project, "status": request.status,
                "reason": request.reason, "created_at": iso_utc(request.created_at)}
