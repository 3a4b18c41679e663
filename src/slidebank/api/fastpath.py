"""A pure-ASGI front for the request a viewer sends hundreds of times a second: a stored Deep Zoom tile.

FastAPI's routing, validation and thread-pool hop cost ~10× more than reading a stored frame
(~20 µs from the page cache). For a GET of a Deep Zoom tile of a stored level of a slide already
open in this process, this layer answers directly from the same tile service and the same caching
rules as the documented route in `api/tiles.py`. Everything else (first touch of a slide,
rendered levels, errors, HEAD, bad credentials) falls through to FastAPI, which is the
reference behaviour. Access is checked and audited by the same `Gatekeeper` as every route.
"""

from __future__ import annotations

import re

from fastapi import HTTPException
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from slidebank.api.security import SESSION_COOKIE, Gatekeeper
from slidebank.api.tiles import CORS, caching_headers, not_modified
from slidebank.catalog.identifiers import SLIDE_ID_CHARACTERS
from slidebank.tiles.deepzoom import passes_through
from slidebank.tiles.service import TileService

TILE_PATH = re.compile(
    rf"^/slides/(?P<slide_id>{SLIDE_ID_CHARACTERS})_files/"
    r"(?P<level>\d{1,2})/(?P<col>\d{1,9})_(?P<row>\d{1,9})\.(?P<extension>jpeg|jpg)$"
)


class DeepZoomFastPath:
    def __init__(self, app: ASGIApp, tiles: TileService, gatekeeper: Gatekeeper) -> None:
        self.app = app
        self.tiles = tiles
        self.gatekeeper = gatekeeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = TILE_PATH.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        pyramid = self.tiles.open_pyramid(match["slide_id"]) if match else None
        if match is None or pyramid is None or not passes_through(pyramid, int(match["level"]), match["extension"]):
            await self.app(scope, receive, send)
            return
        level, col, row = int(match["level"]), int(match["col"]), int(match["row"])
        request_headers = {
            k: v.decode("latin-1") for k, v in scope["headers"] if k in (b"authorization", b"if-none-match", b"cookie")
        }
        session = cookie_parser(request_headers.get(b"cookie", "")).get(SESSION_COOKIE)
        where = f"deepzoom level {level}"
        try:
            principal = self.gatekeeper.principal_from_header(request_headers.get(b"authorization"), session)
            if not self.gatekeeper.tile_read_logged(principal, match["slide_id"], where):
                raise LookupError("audit entry due")  # written by the documented route, off the event loop
            dataset = self.gatekeeper.read_tile(principal, match["slide_id"], where)
        except (HTTPException, LookupError):  # 401 / 404 / audit due: the documented route answers
            await self.app(scope, receive, send)
            return
        headers = caching_headers(pyramid, scope["path"], self.gatekeeper.is_open(dataset), CORS)
        if_none_match = request_headers.get(b"if-none-match")
        if not_modified(headers, if_none_match):
            await _respond(send, 304, headers, b"")
            return
        try:
            tile = self.tiles.deepzoom_tile(match["slide_id"], level, col, row, match["extension"])
        except LookupError:  # outside the grid: let the documented route give the 404
            await self.app(scope, receive, send)
            return
        await _respond(send, 200, {**headers, "Content-Type": "image/jpeg"}, tile.content)


async def _respond(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
