"""Access routes: who am I, access requests and their decisions, grants, notices, the audit."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from slidebank.access.errors import AccessError, TooManyAttempts
from slidebank.access.identity import SESSION_HOURS
from slidebank.access.principal import Principal
from slidebank.api.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Gatekeeper,
    principal_dependency,
    require_user,
)
from slidebank.node import Node

SESSION_SECONDS = SESSION_HOURS * 3600


class NewRequest(BaseModel):
    dataset: str = Field(max_length=255)
    purpose: str = Field(min_length=1, max_length=4000)
    project: str | None = Field(default=None, max_length=255)


class LogIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class ErasureRequest(BaseModel):
    subject: str = Field(min_length=1, max_length=255, description="The subject's pseudonym (SUBJ-…)")


class Approval(BaseModel):
    expires: date


class Rejection(BaseModel):
    reason: str = Field(min_length=1, max_length=4000)


def access_routes(node: Node, gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(tags=["access"])
    current = principal_dependency(gatekeeper)

    def user(caller: Principal = Depends(current)) -> Principal:  # noqa: B008
        return require_user(caller)


    @router.post("/api/session", summary="Log in (browser): sets the session and CSRF cookies")
    def log_in(body: LogIn, request: Request, response: Response) -> dict:
        address = request.client.host if request.client else "unknown"
        try:
            principal, cookie, csrf = node.identities.login(body.name, body.password, address)
        except TooManyAttempts as error:
            raise HTTPException(429, str(error), headers={"Retry-After": str(error.retry_after)}) from None
        except AccessError:
            raise HTTPException(401, "wrong name or password") from None
        secure = request.url.scheme == "https"
        response.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True, secure=secure,
                            samesite="strict")
        response.set_cookie(CSRF_COOKIE, csrf, max_age=SESSION_SECONDS, secure=secure, samesite="strict")
        return {"name": principal.name, "role": principal.role, "csrf": csrf}

    @router.delete("/api/session", summary="Log out (browser): this session ends now, everywhere")
    def log_out(request: Request, response: Response, caller: Principal = Depends(current)) -> dict:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            node.identities.end_session(cookie)
        response.delete_cookie(SESSION_COOKIE)
        response.delete_cookie(CSRF_COOKIE)
        return {"name": caller.name, "logged_out": True}

    @router.delete("/api/users/{name}/sessions", summary="End every browser session of a user (self or administrator)")
    def end_sessions(name: str, caller: Principal = Depends(user)) -> dict:
        return {"name": name, "sessions_ended": node.identities.end_sessions(caller, name)}

    @router.get("/api/me", summary="The caller: name, role, readable and stewarded datasets, committees")
    def me(caller: Principal = Depends(current)) -> dict:
        readable = None if caller.readable is None else sorted(caller.readable)
        return {"name": caller.name, "role": caller.role, "readable_datasets": readable,
                "committees": sorted(caller.committees), "stewarded_datasets": sorted(caller.stewarded),
                "grants": caller.grants}

    @router.post("/api/access-requests", status_code=201, summary="Ask a dataset's committee for access")
    def file_request(body: NewRequest, caller: Principal = Depends(user)) -> dict:
        request_id = node.governance.request_access(caller, body.dataset, body.purpose, body.project)
        return {"id": request_id, "status": "pending"}

    @router.get("/api/access-requests", summary="Requests the caller filed or decides on")
    def list_requests(caller: Principal = Depends(user)) -> list[dict]:
        return node.governance.requests(caller)

    @router.post("/api/access-requests/{request_id}/approve", summary="Approve, with an expiry date")
    def approve(request_id: str, body: Approval, caller: Principal = Depends(user)) -> dict:
        grant = node.governance.approve(request_id, caller, body.expires)
        return {"grant": grant, "expires": body.expires.isoformat()}

    @router.post("/api/access-requests/{request_id}/reject", summary="Reject, with a reason")
    def reject(request_id: str, body: Rejection, caller: Principal = Depends(user)) -> dict:
        node.governance.reject(request_id, caller, body.reason)
        return {"id": request_id, "status": "rejected"}

    @router.post("/api/grants/{grant_id}/revoke", summary="Revoke a grant (or an approved request's grant)")
    def revoke(grant_id: str, caller: Principal = Depends(user)) -> dict:
        grant = node.governance.revoke(grant_id, caller)
        return {"grant": grant, "status": "revoked"}

    @router.get("/api/notifications", summary="The caller's notices (decisions on their requests, new requests)")
    def notifications(caller: Principal = Depends(user)) -> list[dict]:
        return node.notifications.of(caller)

    @router.post("/api/erasures", summary="Erase a data subject (data steward of its datasets, or administrator)")
    def erase(body: ErasureRequest, caller: Principal = Depends(user)) -> dict:  # noqa: B008
        if not node.erasures.may_erase(caller, body.subject):
            raise HTTPException(404, "no such subject in the datasets you steward")
        return node.erasures.erase(body.subject, caller).to_json()

    @router.get("/api/audit", summary="Audit entries of the datasets the caller's committee governs")
    def audit(
        caller: Principal = Depends(user), dataset: Annotated[str | None, Query(max_length=255)] = None
    ) -> list[dict]:
        if caller.role != "administrator" and (dataset is None or dataset not in caller.committees):
            raise HTTPException(403, "name a dataset whose access committee you sit on")
        return list(node.audit.entries(dataset=dataset))

    return router
