"""The one place every HTTP route asks "who is this, and may they read that slide?".

`Gatekeeper.principal_from_header` turns a bearer token — a Slidebank API token or an OIDC JWT of
the configured identity provider — (or no credentials) into a `Principal`;
`Gatekeeper.slide_dataset` answers 404 — the same answer as for a slide that does not exist — when
the principal may not read the slide, so neither errors nor timings reveal restricted slides.
Reads are written to the audit log here too, so a route cannot serve pixels without a record.
Principals are cached for a few seconds per token: a revoked grant stops working within that time.
"""

from __future__ import annotations

import os
from typing import Annotated

from cachetools import TTLCache
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from slidebank.access.oidc import InvalidIdentity, OidcVerifier
from slidebank.access.service import NotAllowed, Principal
from slidebank.node import Node
from slidebank.tiles.service import SlideNotFound

PRINCIPAL_CACHE_SECONDS = float(os.environ.get("SLIDEBANK_PRINCIPAL_CACHE_SECONDS", "10"))
_bearer = HTTPBearer(auto_error=False, description="API token (`slidebank tokens create`)")


class Gatekeeper:
    def __init__(self, node: Node, oidc: OidcVerifier | None = None) -> None:
        self._node = node
        self._oidc = oidc
        self._principals: TTLCache[str, Principal | None] = TTLCache(maxsize=4096, ttl=PRINCIPAL_CACHE_SECONDS)
        self._datasets: TTLCache[str, str | None] = TTLCache(maxsize=65536, ttl=PRINCIPAL_CACHE_SECONDS)

    def principal_from_header(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization` header value; 401 for a bad or expired token."""
        if not authorization:
            return self._cached("", self._node.access.anonymous)
        scheme, _, token = authorization.partition(" ")
        principal, token = None, token.strip()
        if scheme.lower() == "bearer" and token:
            principal = self._cached(token, lambda: self._resolve(token))
        if principal is None:
            raise HTTPException(401, "invalid, expired or revoked token", headers={"WWW-Authenticate": "Bearer"})
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
        return gatekeeper.principal_from_header(request.headers.get("authorization"))

    return current_principal


def require_user(principal: Principal) -> Principal:
    if not principal.authenticated:
        raise HTTPException(401, "log in or send an API token", headers={"WWW-Authenticate": "Bearer"})
    return principal
