"""Access routes: who am I, access requests and their decisions, grants, notices, the audit."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from slidebank.access.errors import AccessError, TooManyAttempts
from slidebank.access.identity import SESSION_HOURS
from slidebank.access.principal import Principal
from slidebank.api.schemas import errors
from slidebank.api.schemas_access import (
    AccessRequest,
    Account,
    Approval,
    Approved,
    AuditEntry,
    CreatedToken,
    ErasureReport,
    ErasureRequest,
    LoggedIn,
    LoggedOut,
    LogIn,
    Me,
    NewRequest,
    NewToken,
    Notification,
    Rejected,
    Rejection,
    RequestFiled,
    Revoked,
    SessionsEnded,
    TokenEntry,
)
from slidebank.api.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Gatekeeper,
    principal_dependency,
    require_user,
)
from slidebank.node import Node

SESSION_SECONDS = SESSION_HOURS * 3600


def secure_cookies(request: Request) -> bool:
    """Whether the browser reached us over HTTPS, so the cookies must be `Secure`. Behind a proxy that
    ends TLS the request itself is plain HTTP: set SLIDEBANK_SECURE_COOKIES=1, or trust the proxy's
    X-Forwarded-Proto with SLIDEBANK_TRUST_FORWARDED_PROTO=1 (only where nothing else can reach us)."""
    if os.environ.get("SLIDEBANK_SECURE_COOKIES", "").lower() in ("1", "true", "yes"):
        return True
    if os.environ.get("SLIDEBANK_TRUST_FORWARDED_PROTO", "").lower() in ("1", "true", "yes"):
        forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        if forwarded:
            return forwarded == "https"
    return request.url.scheme == "https"


def access_routes(node: Node, gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(tags=["access"])
    current = principal_dependency(gatekeeper)

    def user(caller: Principal = Depends(current)) -> Principal:
        return require_user(caller)

    @router.post("/api/session", response_model=LoggedIn, responses=errors(400, 401, 413, 429),
                 summary="Log in (browser): sets the session and CSRF cookies")
    def log_in(body: LogIn, request: Request, response: Response) -> dict[str, Any]:
        address = request.client.host if request.client else "unknown"
        try:
            principal, cookie, csrf = node.identities.login(body.name, body.password, address)
        except TooManyAttempts as error:
            raise HTTPException(429, str(error), headers={"Retry-After": str(error.retry_after)}) from None
        except AccessError:
            raise HTTPException(401, "wrong name or password") from None
        secure = secure_cookies(request)
        response.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True, secure=secure,
                            samesite="strict")
        response.set_cookie(CSRF_COOKIE, csrf, max_age=SESSION_SECONDS, secure=secure, samesite="strict")
        return {"name": principal.name, "role": principal.role, "csrf": csrf}

    @router.delete("/api/session", response_model=LoggedOut, responses=errors(401, 403),
                   summary="Log out (browser): this session ends now, everywhere")
    def log_out(request: Request, response: Response, caller: Principal = Depends(current)) -> dict[str, Any]:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            node.identities.end_session(cookie)
        response.delete_cookie(SESSION_COOKIE)
        response.delete_cookie(CSRF_COOKIE)
        return {"name": caller.name, "logged_out": True}

    @router.delete("/api/users/{name}/sessions", response_model=SessionsEnded, responses=errors(400, 401, 403, 404),
                   summary="End every browser session of a user (self or administrator)")
    def end_sessions(name: str, caller: Principal = Depends(user)) -> dict[str, Any]:
        return {"name": name, "sessions_ended": node.identities.end_sessions(caller, name)}

    @router.get("/api/tokens", response_model=list[TokenEntry], responses=errors(400, 401, 403),
                summary="The caller's API tokens (administrators: anyone's, with ?user=); never the secrets")
    def list_tokens(caller: Principal = Depends(user),
                    name: Annotated[str | None, Query(alias="user", max_length=128)] = None) -> list[dict[str, Any]]:
        return node.identities.list_tokens(caller, name)

    @router.post("/api/tokens", status_code=201, response_model=CreatedToken, responses=errors(400, 401, 413),
                 summary="A new API token for the caller (at most a year); the answer is the one time it is shown")
    def create_token(body: NewToken, caller: Principal = Depends(user)) -> dict[str, Any]:
        token, entry = node.identities.create_token(caller, caller.name, body.label, body.expires_days)
        return {**entry, "token": token}

    @router.delete("/api/tokens/{token_id}", response_model=TokenEntry, responses=errors(400, 401, 404),
                   summary="Revoke a token (one's own; administrators: anyone's); it stops on the next request")
    def revoke_token(token_id: str, caller: Principal = Depends(user)) -> dict[str, Any]:
        return node.identities.revoke_token(caller, token_id)

    @router.post("/api/users/{name}/disable", response_model=Account, responses=errors(400, 401, 403),
                 summary="Disable an account (administrators): its tokens and sessions stop on the next request")
    def disable_user(name: str, caller: Principal = Depends(user)) -> dict[str, Any]:
        return node.identities.set_disabled(caller, name, True)

    @router.post("/api/users/{name}/enable", response_model=Account, responses=errors(400, 401, 403),
                 summary="Enable a disabled account again (administrators)")
    def enable_user(name: str, caller: Principal = Depends(user)) -> dict[str, Any]:
        return node.identities.set_disabled(caller, name, False)

    @router.get("/api/me", response_model=Me, responses=errors(401),
                summary="The caller: name, role, readable and stewarded datasets, committees")
    def me(caller: Principal = Depends(current)) -> dict[str, Any]:
        readable = None if caller.readable is None else sorted(caller.readable)
        return {"name": caller.name, "role": caller.role, "readable_datasets": readable,
                "committees": sorted(caller.committees), "stewarded_datasets": sorted(caller.stewarded),
                "grants": caller.grants}

    @router.post("/api/access-requests", status_code=201, response_model=RequestFiled,
                 responses=errors(400, 401, 403, 413), summary="Ask a dataset's committee for access")
    def file_request(body: NewRequest, caller: Principal = Depends(user)) -> dict[str, Any]:
        request_id = node.governance.request_access(caller, body.dataset, body.purpose, body.project)
        return {"id": request_id, "status": "pending"}

    @router.get("/api/access-requests", response_model=list[AccessRequest], responses=errors(401),
                summary="Requests the caller filed or decides on")
    def list_requests(caller: Principal = Depends(user)) -> list[dict[str, Any]]:
        return node.governance.requests(caller)

    @router.post("/api/access-requests/{request_id}/approve", response_model=Approved,
                 responses=errors(400, 401, 403, 404, 413), summary="Approve, with an expiry date")
    def approve(request_id: str, body: Approval, caller: Principal = Depends(user)) -> dict[str, Any]:
        grant = node.governance.approve(request_id, caller, body.expires)
        return {"grant": grant, "expires": body.expires.isoformat()}

    @router.post("/api/access-requests/{request_id}/reject", response_model=Rejected,
                 responses=errors(400, 401, 403, 404, 413), summary="Reject, with a reason")
    def reject(request_id: str, body: Rejection, caller: Principal = Depends(user)) -> dict[str, Any]:
        node.governance.reject(request_id, caller, body.reason)
        return {"id": request_id, "status": "rejected"}

    @router.post("/api/grants/{grant_id}/revoke", response_model=Revoked, responses=errors(401, 403, 404),
                 summary="Revoke a grant (or an approved request's grant)")
    def revoke(grant_id: str, caller: Principal = Depends(user)) -> dict[str, Any]:
        grant = node.governance.revoke(grant_id, caller)
        return {"grant": grant, "status": "revoked"}

    @router.get("/api/notifications", response_model=list[Notification], responses=errors(401),
                summary="The caller's notices (decisions on their requests, new requests)")
    def notifications(caller: Principal = Depends(user)) -> list[dict[str, Any]]:
        return node.notifications.of(caller)

    @router.post("/api/erasures", response_model=ErasureReport, responses=errors(400, 401, 403, 404, 413),
                 summary="Erase a data subject (data steward of its datasets, or administrator)")
    def erase(body: ErasureRequest, caller: Principal = Depends(user)) -> dict[str, Any]:
        if not node.erasures.may_erase(caller, body.subject):
            raise HTTPException(404, "no such subject in the datasets you steward")
        return node.erasures.erase(body.subject, caller).to_json()

    @router.get("/api/audit", response_model=list[AuditEntry], responses=errors(400, 401, 403),
                summary="Audit entries of the datasets the caller's committee governs")
    def audit(
        caller: Principal = Depends(user), dataset: Annotated[str | None, Query(max_length=255)] = None
    ) -> list[dict[str, Any]]:
        if caller.role != "administrator" and (dataset is None or dataset not in caller.committees):
            raise HTTPException(403, "name a dataset whose access committee you sit on")
        return list(node.audit.entries(dataset=dataset))

    return router
