"""A pure-ASGI front for the requests sent hundreds of times a second: stored Deep Zoom tiles (viewers),
small batches of stored frames (the SDK's patch reads) and DICOMweb frames as stored (DICOMweb viewers).

FastAPI's routing, validation and thread-pool hop cost ~10× more than reading a stored frame
(~20 µs from the page cache). For a GET of a Deep Zoom tile of a stored level, or of at most
FAST_FRAMES stored frames, of a slide already open in this process, this layer answers directly
from the same tile service and the same caching rules as the documented routes (`api/tiles.py`,
`api/frames.py`). Everything else (first touch of a slide, rendered levels, larger batches, errors,
HEAD, bad credentials, an audit entry due) falls through to FastAPI, which is the reference
behaviour. Access is checked and audited by the same `Gatekeeper` as every route.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from fastapi import HTTPException
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from slidebank.api.dicomweb import FRAMES_PATH as DICOMWEB_FRAMES_PATH
from slidebank.api.dicomweb import frames_audit_place, frames_body
from slidebank.api.frames import frames_answer, max_frames, parse_tiles
from slidebank.api.security import SESSION_COOKIE, Gatekeeper
from slidebank.api.tiles import CORS, caching_headers, not_modified
from slidebank.catalog.identifiers import SLIDE_ID_CHARACTERS
from slidebank.dicomweb.negotiation import NotAcceptable, frame_answer
from slidebank.dicomweb.service import DicomWeb, frames_of_level
from slidebank.tiles.deepzoom import passes_through
from slidebank.tiles.pyramid import SlidePyramid
from slidebank.tiles.service import TileService

TILE_PATH = re.compile(
    rf"^/slides/(?P<slide_id>{SLIDE_ID_CHARACTERS})_files/"
    r"(?P<level>\d{1,2})/(?P<col>\d{1,9})_(?P<row>\d{1,9})\.(?P<extension>jpeg|jpg)$"
)
FRAMES_PATH = re.compile(rf"^/api/slides/(?P<slide_id>{SLIDE_ID_CHARACTERS})/frames$")
FAST_FRAMES = 16  # more frames are read off the event loop, by the documented route
_TILE = r"\d{1,9}_\d{1,9}"
FRAMES_QUERY = re.compile(rf"^level=(?P<level>\d{{1,2}})&tiles=(?P<tiles>{_TILE}(?:,{_TILE}){{0,{FAST_FRAMES - 1}}})$")


class PixelFastPath:
    def __init__(self, app: ASGIApp, tiles: TileService, gatekeeper: Gatekeeper, dicomweb: DicomWeb) -> None:
        self.app = app
        self.tiles = tiles
        self.dicomweb = dicomweb
        self.gatekeeper = gatekeeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = None
        if scope["type"] == "http" and scope["method"] == "GET":
            if (tile := TILE_PATH.match(scope["path"])) is not None:
                answer = self._deepzoom_tile(scope, tile)
            elif (frames := FRAMES_PATH.match(scope["path"])) is not None:
                answer = self._frames(scope, frames)
            elif (dicom := DICOMWEB_FRAMES_PATH.match(scope["path"])) is not None:
                answer = self._dicomweb_frames(scope, dicom)
        if answer is None:
            await self.app(scope, receive, send)
            return
        status, headers, body = answer
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    def _deepzoom_tile(self, scope: Scope, match: re.Match[str]) -> tuple[int, dict[str, str], bytes] | None:
        pyramid = self.tiles.open_pyramid(match["slide_id"])
        level, col, row = int(match["level"]), int(match["col"]), int(match["row"])
        if pyramid is None or not passes_through(pyramid, level, match["extension"]):
            return None
        checked = self._checked(scope, pyramid, match["slide_id"], f"deepzoom level {level}", scope["path"], CORS)
        if checked is None or checked[0] == 304:
            return checked
        try:
            tile = self.tiles.deepzoom_tile(match["slide_id"], level, col, row, match["extension"])
        except LookupError:  # outside the grid: let the documented route give the 404
            return None
        return 200, {**checked[1], "Content-Type": "image/jpeg"}, tile.content

    def _frames(self, scope: Scope, match: re.Match[str]) -> tuple[int, dict[str, str], bytes] | None:
        query = FRAMES_QUERY.match(unquote(scope["query_string"].decode("latin-1")))
        pyramid = self.tiles.open_pyramid(match["slide_id"])
        if query is None or pyramid is None:
            return None
        level = int(query["level"])
        if not (level < pyramid.slide.level_count and pyramid.slide.frames_indexed(level)):
            return None  # wsidicom levels, or a first read that walks the file: not on the event loop
        if query["tiles"].count(",") >= max_frames(pyramid.slide):
            return None  # more than this slide's answers may carry: the documented route refuses
        path = f"{scope['path']}?{scope['query_string'].decode('latin-1')}"
        checked = self._checked(scope, pyramid, match["slide_id"], f"frames level {level}", path, None)
        if checked is None or checked[0] == 304:
            return checked
        try:
            body, content_type = frames_answer(pyramid.slide, level, parse_tiles(query["tiles"]))
        except IndexError:  # outside the pyramid: the documented route explains
            return None
        return 200, {**checked[1], "Content-Type": content_type}, body

    def _dicomweb_frames(self, scope: Scope, match: re.Match[str]) -> tuple[int, dict[str, str], bytes] | None:
        """WADO-RS frames of an instance a request of this process looked up, as stored (no transcoding)."""
        instance = self.dicomweb.known(match["sop"])
        if instance is None or (instance.study_uid, instance.series_uid) != (match["study"], match["series"]):
            return None
        numbers = [int(number) for number in match["frames"].split(",")]
        if not all(1 <= number <= instance.number_of_frames for number in numbers):
            return None
        accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"), None)
        try:
            answer = frame_answer(accept, instance.transfer_syntax, len(numbers), instance.media_type)
        except NotAcceptable:
            return None
        placed = None if answer.transcode else self.dicomweb.open_level(instance)
        pyramid = self.tiles.open_pyramid(instance.slide_id)
        if placed is None or pyramid is None:
            return None
        checked = self._checked(scope, pyramid, instance.slide_id, frames_audit_place(instance),
                                f"{scope['path']}|{accept}", None)
        if checked is None or checked[0] == 304:
            return checked
        body, content_type = frames_body(frames_of_level(*placed, numbers), answer)
        return 200, {**checked[1], "Content-Type": content_type}, body

    def _checked(self, scope: Scope, pyramid: SlidePyramid, slide_id: str, where: str, path: str,
                 extra: dict[str, str] | None) -> tuple[int, dict[str, str], bytes] | None:
        """(304, headers, b"") or (200, headers, b"") once access is checked and audited; None to fall through."""
        request_headers = {
            k: v.decode("latin-1") for k, v in scope["headers"] if k in (b"authorization", b"if-none-match", b"cookie")
        }
        session = cookie_parser(request_headers.get(b"cookie", "")).get(SESSION_COOKIE)
        try:
            principal = self.gatekeeper.principal_from_header(request_headers.get(b"authorization"), session)
            if not self.gatekeeper.tile_read_logged(principal, slide_id, where):
                raise LookupError("audit entry due")  # written by the documented route, off the event loop
            dataset = self.gatekeeper.read_tile(principal, slide_id, where)
        except (HTTPException, LookupError):  # 401 / 404 / audit due: the documented route answers
            return None
        headers = caching_headers(pyramid, path, self.gatekeeper.is_open(dataset), extra)
        if not_modified(headers, request_headers.get(b"if-none-match")):
            return 304, headers, b""
        return 200, headers, b""
