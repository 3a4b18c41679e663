"""Plain ASGI layers around the app: HEAD answered wherever GET is, and the governance watcher."""

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
