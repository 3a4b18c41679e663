"""Plain ASGI layers around the app: HEAD answered wherever GET is, security headers on every answer,
and the governance watcher."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

WATCH_SECONDS = 1.0


class HeadAsGet:
    """HEAD is GET without the body (RFC 9110 §9.3.2): every GET route answers it, with the same
    status and headers, Content-Length included, and the same access checks."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


# Pages load only what the app serves (OpenSeadragon, Annotorious and the API docs are vendored at
# build time); inline styles stay allowed for the viewers' own overlays. No page may be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "worker-src 'self' blob:; connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI and ReDoc start from a small inline script FastAPI writes into their page.
DOCS_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")
DOCS_PATHS = frozenset({"/docs", "/redoc"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Headers every answer carries, and a content security policy on pages (HTML)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_CONTENT_SECURITY_POLICY if scope["path"] in DOCS_PATHS else CONTENT_SECURITY_POLICY

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                content_type = dict(headers).get(b"content-type", b"")
                if content_type.startswith(b"text/html") and b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", policy.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class DicomwebCors:
    """Cross-origin access to /dicomweb: DICOMweb viewers (Slim, dicom-microscopy-viewer) are usually
    served from another origin. Any origin may ask, with a bearer token in `Authorization` (never with
    cookies: none are honoured cross-site), so what it gets is exactly what that token may read;
    preflight requests are answered here."""

    PREFIX = "/dicomweb/"
    ALLOW = [(b"access-control-allow-origin", b"*"),
             (b"access-control-expose-headers", b"Warning, ETag, Content-Type, Content-Length")]
    PREFLIGHT = [*ALLOW, (b"access-control-allow-methods", b"GET, HEAD, POST, OPTIONS"),
                 (b"access-control-allow-headers", b"Authorization, Accept, Content-Type, If-None-Match"),
                 (b"access-control-max-age", b"600"), (b"content-length", b"0")]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.PREFIX):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": self.PREFLIGHT})
            await send({"type": "http.response.body", "body": b""})
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.ALLOW]}
            await send(message)

        await self.app(scope, receive, with_cors)


def watch_governance(sync: Callable[[], None], interval: float = WATCH_SECONDS) -> threading.Event:
    """Also check the governance version in the background, so that a process nobody is asking
    anything still lets go of an erased slide's files and keys within a second. Returns the
    event that stops it."""
    stop = threading.Event()
    log = logging.getLogger("slidebank.api")

    def loop() -> None:
        while not stop.wait(interval):
            try:
                sync()
            except Exception:  # a database hiccup: the next request checks again anyway
                log.warning("governance check failed", exc_info=True)

    threading.Thread(target=loop, name="governance-watch", daemon=True).start()
    return stop
