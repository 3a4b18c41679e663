"""Access routes: who am I, access requests and their decisions, grants, notices, the audit."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from slidebank.access.erasure import erase_subject
from slidebank.access.service import Principal
from slidebank.api.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Gatekeeper,
    principal_dependency,
    require_user,
)
from slidebank.node import Node


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
        principal = node.access.login(body.name, body.password)
        if principal is None:
            node.audit.record(body.name, "login.failed")
            raise HTTPException(401, "wrong name or password")
        cookie, csrf = gatekeeper.sessions.issue(principal.name)
        secure = request.url.scheme == "https"
        response.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True, secure=secure,
                            samesite="strict")
        response.set_cookie(CSRF_COOKIE, csrf, max_age=SESSION_SECONDS, secure=secure, samesite="strict")
        node.audit.record(principal.name, "login")
        return {"name": principal.name, "role": principal.role, "csrf": csrf}

    @router.delete("/api/session", summary="Log out (browser)")
    def log_out(response: Response, caller: Principal = Depends(current)) -> dict:
        response.delete_cookie(SESSION_COOKIE)
        response.delete_cookie(CSRF_COOKIE)
        return {"name": caller.name, "logged_out": True}

    @router.get("/api/me", summary="The caller: name, role, readable and stewarded datasets, committees")
    def me(caller: Principal = Depends(current)) -> dict:
        readable = None if caller.readable is None else sorted(caller.readable)
        return {"name": caller.name, "role": caller.role, "readable_datasets": readable,
                "committees": sorted(caller.committees), "stewarded_datasets": sorted(caller.stewarded),
                "grants": caller.grants}

    @router.post("/api/access-requests", status_code=201, summary="Ask a dataset's committee for access")
    def file_request(body: NewRequest, caller: Principal = Depends(user)) -> dict:
        request_id = node.access.request_access(caller.name, body.dataset, body.purpose, body.project)
        return {"id": request_id, "status": "pending"}

    @router.get("/api/access-requests", summary="Requests the caller filed or decides on")
    def list_requests(caller: Principal = Depends(user)) -> list[dict]:
        return node.access.requests(caller)

    @router.post("/api/access-requests/{request_id}/approve", summary="Approve, with an expiry date")
    def approve(request_id: str, body: Approval, caller: Principal = Depends(user)) -> dict:
        grant = node.access.approve(request_id, caller, body.expires)
        gatekeeper.forget()
        return {"grant": grant, "expires": body.expires.isoformat()}

    @router.post("/api/access-requests/{request_id}/reject", summary="Reject, with a reason")
    def reject(request_id: str, body: Rejection, caller: Principal = Depends(user)) -> dict:
        node.access.reject(request_id, caller, body.reason)
        return {"id": request_id, "status": "rejected"}

    @router.post("/api/grants/{grant_id}/revoke", summary="Revoke a grant (or an approved request's grant)")
    def revoke(grant_id: str, caller: Principal = Depends(user)) -> dict:
        grant = node.access.revoke(grant_id, caller)
        gatekeeper.forget()
        return {"grant": grant, "status": "revoked"}

    @router.get("/api/notifications", summary="The caller's notices (decisions on their requests, new requests)")
    def notifications(caller: Principal = Depends(user)) -> list[dict]:
        return node.access.notifications(caller)

    @router.post("/api/erasures", summary="Erase a data subject (data steward of its datasets, or administrator)")
    def erase(body: ErasureRequest, caller: Principal = Depends(user)) -> dict:  # noqa: B008
        datasets = node.catalog.subject_datasets(body.subject)
        allowed = caller.role == "administrator" or (
            caller.role == "data_steward" and datasets and datasets <= (caller.stewarded or frozenset()))
        if not datasets or not allowed:
            raise HTTPException(404, "no such subject in the datasets you steward")
        report = erase_subject(node, body.subject, caller.name)
        gatekeeper.forget()
        return report.to_json()

    @router.get("/api/audit", summary="Audit entries of the datasets the caller's committee governs")
    def audit(
        caller: Principal = Depends(user), dataset: Annotated[str | None, Query(max_length=255)] = None
    ) -> list[dict]:
        if caller.role != "administrator" and (dataset is None or dataset not in caller.committees):
            raise HTTPException(403, "name a dataset whose access committee you sit on")
        return list(node.audit.entries(dataset=dataset))

    return router
