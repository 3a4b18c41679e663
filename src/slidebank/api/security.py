"""The one place every HTTP route asks "who is this, and may they read that slide?".

`Gatekeeper.principal_for_request` turns a bearer token — a Slidebank API token or an OIDC JWT of
the configured identity provider — or a browser session cookie (or nothing) into a `Principal`;
`Gatekeeper.slide_dataset` answers 404 — the same answer as for a slide that does not exist — when
the principal may not read the slide, so neither errors nor timings reveal restricted slides.
Reads are written to the audit log here too, so a route cannot serve pixels without a record.

Principals and slide datasets are cached per process, but every request first compares the
database's governance version with the one the caches were built at (a few microseconds): any
grant, revocation, policy change, disabled account, ended session or erasure empties them, so it
takes effect on the very next request in every worker process.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from cachetools import LRUCache
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from slidebank.access.errors import NotAllowed, SlideNotFound
from slidebank.access.identity import Identities
from slidebank.access.oidc import InvalidIdentity, OidcVerifier
from slidebank.access.principal import Principal
from slidebank.access.version import GovernanceWatch
from slidebank.audit import AuditLog
from slidebank.catalog import Catalog

SESSION_COOKIE, CSRF_COOKIE, CSRF_HEADER = "slidebank_session", "slidebank_csrf", "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PRINCIPAL_CACHE_ENTRIES = 4096
DATASET_CACHE_ENTRIES = 65536
ENDED_SESSION = f"{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"
_bearer = HTTPBearer(auto_error=False, description="API token (`slidebank tokens create`) or OIDC access token")


class Gatekeeper:
    def __init__(self, identities: Identities, catalog: Catalog, audit: AuditLog, watch: GovernanceWatch,
                 oidc: OidcVerifier | None = None) -> None:
        self._identities = identities
        self._catalog = catalog
        self._audit = audit
        self._watch = watch
        self._oidc = oidc
        self._lock = threading.Lock()  # the caches are shared by the server's threads
        self._version = -1
        self._principals: LRUCache[str, tuple[Principal, str | None]] = LRUCache(PRINCIPAL_CACHE_ENTRIES)
        self._datasets: LRUCache[str, str] = LRUCache(DATASET_CACHE_ENTRIES)
        self._on_change: list[Callable[[], object]] = []

    def on_governance_change(self, callback: Callable[[], object]) -> None:
        """Run `callback` (e.g. close erased slides) whenever the governance version moves."""
        self._on_change.append(callback)

    def sync(self) -> None:
        """Empty the caches if access changed anywhere since they were filled; first thing per request."""
        current = self._watch.current()
        if current == self._version:
            return
        with self._lock:
            self._principals.clear()
            self._datasets.clear()
            self._version = current
        for callback in self._on_change:
            callback()

    # --- who is calling ---------------------------------------------------------------------------

    def principal_from_header(
        self, authorization: str | None, session_cookie: str | None = None, method: str = "GET",
        csrf_header: str | None = None,
    ) -> Principal:
        """The caller: a bearer token, else a browser session, else anonymous.

        401 for a bad, expired or revoked token or session; 403 for a cookie-authenticated
        state-changing request without the session's CSRF token.
        """
        self.sync()
        if not authorization and session_cookie:
            return self._session_principal(session_cookie, method, csrf_header)
        if not authorization:
            anonymous = self._cached("", lambda: (self._identities.anonymous(), None))
            assert anonymous is not None  # anonymous always resolves
            return anonymous[0]
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        resolved = self._cached("token:" + token, lambda: self._resolve(token)) \
            if scheme.lower() == "bearer" and token else None
        if resolved is None:
            raise HTTPException(401, "invalid, expired or revoked token", headers={"WWW-Authenticate": "Bearer"})
        return resolved[0]

    def principal_for_request(self, request: Request) -> Principal:
        """The caller of an HTTP request (bearer token, session cookie, or anonymous)."""
        return self.principal_from_header(
            request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE), request.method,
            request.headers.get(CSRF_HEADER),
        )

    def _session_principal(self, cookie: str, method: str, csrf_header: str | None) -> Principal:
        resolved = self._cached("session:" + cookie, lambda: self._identities.session_principal(cookie))
        if resolved is None:
            raise HTTPException(401, "your session has ended; log in again", headers={"Set-Cookie": ENDED_SESSION})
        principal, csrf = resolved
        if method in UNSAFE_METHODS and not (csrf_header and csrf and hmac.compare_digest(csrf_header, csrf)):
            raise HTTPException(403, "missing or wrong CSRF token")
        return principal

    def _resolve(self, token: str) -> tuple[Principal, str | None] | None:
        if self._oidc is not None and self._oidc.looks_like_jwt(token):
            try:
                return self._identities.principal_for_identity(self._oidc.verify(token)), None
            except (InvalidIdentity, NotAllowed):
                return None
        principal = self._identities.principal_for_token(token)
        return (principal, None) if principal is not None else None

    def _cached(self, key: str, load: Callable[[], tuple[Principal, str | None] | None]
                ) -> tuple[Principal, str | None] | None:
        """A principal from the cache while the governance version stands and nothing behind it expired."""
        now = datetime.now(UTC)
        with self._lock:
            hit = self._principals.get(key)
        if hit is not None and (hit[0].valid_until is None or hit[0].valid_until > now):
            return hit
        loaded = load()
        if loaded is not None:
            with self._lock:
                self._principals[key] = loaded
        return loaded

    # --- may they read it -------------------------------------------------------------------------

    def slide_dataset(self, principal: Principal, slide_id: str) -> str:
        """The slide's dataset if the principal may read it; SlideNotFound (404) otherwise."""
        with self._lock:
            dataset = self._datasets.get(slide_id)
        if dataset is None:
            dataset = self._catalog.slide_dataset(slide_id)  # unknown slides are not cached: ingest adds them
            if dataset is not None:
                with self._lock:
                    self._datasets[slide_id] = dataset
        if dataset is None or not principal.can_read(dataset):
            raise SlideNotFound("no such slide")
        return dataset

    def read_slide(self, principal: Principal, slide_id: str, what: str, **detail: object) -> str:
        """Check and audit one read of a slide's metadata or pixels; returns its dataset."""
        dataset = self.slide_dataset(principal, slide_id)
        self._audit.record(principal.name, what, dataset=dataset, slide_id=slide_id,
                           grant=principal.grants.get(dataset), detail=dict(detail))
        return dataset

    def tile_read_logged(self, principal: Principal, slide_id: str, where: str) -> bool:
        return self._audit.tile_read_logged(principal.name, slide_id, where)

    def read_tile(self, principal: Principal, slide_id: str, where: str) -> str:
        """Check and audit a tile read; `where` names the level or API (aggregated per window)."""
        dataset = self.slide_dataset(principal, slide_id)
        self._audit.record_tile_read(principal.name, dataset, slide_id, where, principal.grants.get(dataset))
        return dataset

    def record_listing(self, principal: Principal, action: str, matches: dict[str, int], **detail: object) -> None:
        """Audit a listing or search that showed controlled data: one entry per controlled dataset it
        counted or listed (open data is public), so each committee sees it in its dataset's audit."""
        for dataset, count in sorted(matches.items()):
            if count and not self.is_open(dataset):
                self._audit.record(principal.name, action, dataset=dataset, grant=principal.grants.get(dataset),
                                   detail={"matches": count, **detail})

    def record_patch_use(self, principal: Principal, slides_per_dataset: dict[str, int], use: str, **detail: object) -> None:
        """Audit an export or a training read: one entry per dataset, open ones too (files, or what a
        model learnt from them, leave the node)."""
        action = "patches.export" if use == "export" else "patches.train"
        for dataset, count in sorted(slides_per_dataset.items()):
            self._audit.record(principal.name, action, dataset=dataset, grant=principal.grants.get(dataset),
                               detail={"slides": count, **detail})

    def may_view(self, request: Request, slide_id: str) -> bool:
        """Whether the caller of a page request may read the slide (the viewer page asks)."""
        try:
            self.slide_dataset(self.principal_for_request(request), slide_id)
        except (HTTPException, SlideNotFound):
            return False
        return True

    def is_open(self, dataset: str) -> bool:
        """Whether anyone may read the dataset (public caching is then harmless); within a request,
        after its governance check."""
        anonymous = self._cached("", lambda: (self._identities.anonymous(), None))
        return anonymous is not None and anonymous[0].can_read(dataset)


def principal_dependency(gatekeeper: Gatekeeper) -> Callable[..., Principal]:
    def current_principal(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        return gatekeeper.principal_for_request(request)

    return current_principal


def require_user(principal: Principal) -> Principal:
    if not principal.authenticated:
        raise HTTPException(401, "log in or send an API token", headers={"WWW-Authenticate": "Bearer"})
    return principal
