"""The SDK on a node folder of this machine: the node's own API app, called in-process.

Going through the app (not the services directly) is what keeps the local client honest: the
same gatekeeper, the same audit entries, the same answers as over the network. httpx's ASGI
transport is asynchronous; `AppTransport` runs it on an event loop of its own thread (anyio's
blocking portal) so the synchronous client can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

LOCAL_TOKEN_LABEL = "sdk-local"
LOCAL_URL = "http://slidebank.local"


class AppTransport(httpx.BaseTransport):
    """Synchronous requests to an ASGI app in this process."""

    def __init__(self, app: Any) -> None:
        self._asgi = httpx.ASGITransport(app)
        self._portal_context: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self._portal = self._portal_context.__enter__()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            response = await self._asgi.handle_async_request(request)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content)

        return self._portal.call(send)

    def close(self) -> None:
        self._portal_context.__exit__(None, None, None)


def open_local(home: Path | None, token: str | None, user: str | None
               ) -> tuple[httpx.Client, str | None, Path, Callable[[], None]]:
    """An httpx client bound to the node's app, the token to use, the node's folder, and what to do on close."""
    from slidebank.access.principal import operator
    from slidebank.api.app import create_app
    from slidebank.node import Node

    node = Node.open(home)
    made: str | None = None
    if token is None and user is not None:
        token, _ = node.identities.create_token(operator(), user, LOCAL_TOKEN_LABEL, expires_days=1)
        made = token
    http = httpx.Client(transport=AppTransport(create_app(node)), base_url=LOCAL_URL, timeout=None)

    def close() -> None:
        if made is not None:
            node.identities.revoke_token(operator(), made)
        node.close()

    return http, token, node.settings.home, close
