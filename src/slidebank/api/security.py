"""The one place every HTTP route asks "who is this, and may they read that slide?".

`Gatekeeper.principal_from_header` turns a bearer token — a Slidebank API token or an OIDC JWT of
the configured identity provider — (or no credentials) into a `Principal`;
`Gatekeeper.slide_dataset` answers 404 — the same answer as for a slide that does not exist — when
the principal may not read the slide, so neither errors nor timings reveal restricted slides.
Reads are written to the audit log here too, so a route cannot serve pixels without a record.
Principals are cached for a few seconds per token: a revoked grant stops working within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from typing import Annotated

from cachetools import TTLCache
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from itsdangerous import BadSignature, URLSafeTimedSerializer

from slidebank.access.oidc import InvalidIdentity, OidcVerifier
from slidebank.access.service import AccessError, NotAllowed, Principal
from slidebank.node import Node
from slidebank.tiles.service import SlideNotFound

PRINCIPAL_CACHE_SECONDS = float(os.environ.get("SLIDEBANK_PRINCIPAL_CACHE_SECONDS", "10"))
SESSION_COOKIE, CSRF_COOKIE, CSRF_HEADER = "slidebank_session", "slidebank_csrf", "x-csrf-token"
SESSION_SECONDS = 12 * 3600
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_bearer = HTTPBearer(auto_error=False, description="API token (`slidebank tokens create`) or OIDC access token")


class Sessions:
    """Browser sessions: a signed, expiring cookie naming the user and its CSRF token.

    Cookies ride along on every request, including ones another site makes the browser send, so a
    state-changing request authenticated by the cookie must also echo the CSRF token in a header
    (double submit); bearer tokens are never sent implicitly and need no such proof.
    """

    def __init__(self, node_secret: bytes) -> None:
        key = hmac.new(node_secret, b"slidebank browser sessions", hashlib.sha256).digest()
        self._signer = URLSafeTimedSerializer(key, salt="session")

    def issue(self, user_name: str) -> tuple[str, str]:
        csrf = secrets.token_urlsafe(24)
        return self._signer.dumps({"user": user_name, "csrf": csrf}), csrf

    def read(self, cookie: str) -> dict[str, str] | None:
        try:
            return self._signer.loads(cookie, max_age=SESSION_SECONDS)
        except BadSignature:  # tampered, or older than SESSION_SECONDS
            return None


class Gatekeeper:
    def __init__(self, node: Node, oidc: OidcVerifier | None = None) -> None:
        self._node = node
        self._oidc = oidc
        self.sessions = Sessions(node.secret)
        self._principals: TTLCache[str, Principal | None] = TTLCache(maxsize=4096, ttl=PRINCIPAL_CACHE_SECONDS)
        self._datasets: TTLCache[str, str | None] = TTLCache(maxsize=65536, ttl=PRINCIPAL_CACHE_SECONDS)

    def principal_from_header(
        self, authorization: str | None, session_cookie: str | None = None, method: str = "GET",
        csrf_header: str | None = None,
    ) -> Principal:
        """The caller: a bearer token, else a browser session, else anonymous.

        401 for a bad, expired or revoked token or session; 403 for a cookie-authenticated
        state-changing request without the session's CSRF token.
        """
        if not authorization and session_cookie:
            return self._session_principal(session_cookie, method, csrf_header)
        if not authorization:
            return self._cached("", self._node.access.anonymous)
        scheme, _, token = authorization.partition(" ")
        principal, token = None, token.strip()
        if scheme.lower() == "bearer" and token:
            principal = self._cached(token, lambda: self._resolve(token))
        if principal is None:
            raise HTTPException(401, "invalid, expired or revoked token", headers={"WWW-Authenticate": "Bearer"})
        return principal

    def principal_for_request(self, request: Request) -> Principal:
        """The caller of an HTTP request (bearer token, session cookie, or anonymous)."""
        return self.principal_from_header(
            request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE), request.method,
            request.headers.get(CSRF_HEADER),
        )

    def _session_principal(self, cookie: str, method: str, csrf_header: str | None) -> Principal:
        ended = HTTPException(401, "your session has ended; log in again",
                              headers={"Set-Cookie": f"{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"})
        session = self.sessions.read(cookie)
        if session is None:
            raise ended
        if method in UNSAFE_METHODS and not (csrf_header and hmac.compare_digest(csrf_header, session["csrf"])):
            raise HTTPException(403, "missing or wrong CSRF token")

        def load() -> Principal | None:
            try:
                return self._node.access.principal_for_user(session["user"])
            except AccessError:
                return None

        principal = self._cached("session:" + cookie, load)
        if principal is None:
            raise ended
        return principal

    def _resolve(self, token: str) -> Principal | None:
        if self._oidc is not None and self._oidc.looks_like_jwt(token):
            try:
                return self._node.access.principal_for_identity(self._oidc.verify(token))
            except (InvalidIdentity, NotAllowed):
                return None
        return self._node.access.principal_for_token(token)

    def slide_dataset(self, principal: Principal, slide_id: str) -> str:
        """The slide's dataset if the principal may read it; SlideNotFound (404) otherwise."""
        if slide_id not in self._datasets:
            self._datasets[slide_id] = self._node.catalog.slide_dataset(slide_id)
        dataset = self._datasets[slide_id]
        if not principal.can_read(dataset):
            raise SlideNotFound("no such slide")
        return dataset  # type: ignore[return-value]  (can_read(None) is False)

    def read_slide(self, principal: Principal, slide_id: str, what: str, **detail: object) -> str:
        """Check and audit one read of a slide's metadata or pixels; returns its dataset."""
        dataset = self.slide_dataset(principal, slide_id)
        self._node.audit.record(principal.name, what, dataset=dataset, slide_id=slide_id,
                                grant=principal.grants.get(dataset), detail=dict(detail))
        return dataset

    def tile_read_logged(self, principal: Principal, slide_id: str, where: str) -> bool:
        return self._node.audit.tile_read_logged(principal.name, slide_id, where)

    def read_tile(self, principal: Principal, slide_id: str, where: str) -> None:
        """Check and audit a tile read; `where` names the level or API (aggregated per window)."""
        dataset = self.slide_dataset(principal, slide_id)
        self._node.audit.record_tile_read(principal.name, dataset, slide_id, where, principal.grants.get(dataset))

    def forget(self) -> None:
        """Drop cached principals and slide datasets (after grants or erasure change them)."""
        self._principals.clear()
        self._datasets.clear()

    def _cached(self, key: str, load) -> Principal | None:  # noqa: ANN001
        if key not in self._principals:
            self._principals[key] = load()
        return self._principals[key]


def principal_dependency(gatekeeper: Gatekeeper):  # noqa: ANN201 - a FastAPI dependency
    def current_principal(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        return gatekeeper.principal_for_request(request)

    return current_principal


def require_user(principal: Principal) -> Principal:
    if not principal.authenticated:
        raise HTTPException(401, "log in or send an API token", headers={"WWW-Authenticate": "Bearer"})
    return principal
