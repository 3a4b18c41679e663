"""Stored frames over HTTP, for clients that decode themselves (the SDK): no re-encoding in between.

`/pyramid` describes the stored levels and how their frames are encoded; `/frames` returns up to
MAX_FRAMES stored frames of one level in one answer, as DICOMweb's WADO-RS returns frames: a
`multipart/related` body, one part per frame in the order asked, each with its media type. One
request per region instead of one per tile is what makes random patches fast over a network.
Frames are whole (edge tiles are not cut to the level), exactly as stored.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import Response

from slidebank.access.principal import Principal
from slidebank.api.schemas import errors
from slidebank.api.schemas_pixels import StoredLevel, StoredPyramid
from slidebank.api.security import Gatekeeper, principal_dependency
from slidebank.api.tiles import SlideId, caching_headers, not_modified
from slidebank.slides.reader import StoredSlide
from slidebank.tiles.service import TileService

MAX_FRAMES = 64
MAX_FRAME_PIXELS = 64 * 512 * 512  # pixels of the frames of one answer: fewer frames when tiles are large


def max_frames(slide: StoredSlide) -> int:
    """Frames one answer may carry for this slide (its largest tiles decide)."""
    largest = max(width * height for width, height in slide.level_tile_dimensions)
    return max(1, min(MAX_FRAMES, MAX_FRAME_PIXELS // largest))


TILE_LIST = r"^\d{1,9}_\d{1,9}(,\d{1,9}_\d{1,9})*$"


def parse_tiles(listed: str) -> list[tuple[int, int]]:
    """(column, row) of each `COLUMN_ROW` in a comma-separated list (checked against TILE_LIST)."""
    return [(int(column), int(row)) for column, _, row in (tile.partition("_") for tile in listed.split(","))]


BOUNDARY = secrets.token_hex(16)
"""One boundary per process: clients' header parsers (Python's http.client among them) compile a
pattern per boundary they meet, which a new boundary per answer would make them do every time."""


def frames_answer(slide: StoredSlide, level: int, tiles: list[tuple[int, int]]) -> tuple[bytes, str]:
    """The body and content type of an answer of stored frames, whole and as stored (the route and
    the fast path send the same); IndexError for a tile or level outside the pyramid."""
    media_type = slide.frame_encoding(level).media_type
    parts = [slide.read_encoded_tile(level, column, row, crop_to_level=False) for column, row in tiles]
    boundary = BOUNDARY
    if any(boundary.encode() in part for part in parts):  # never in practice; then a boundary of its own
        boundary = secrets.token_hex(16)
    body = multipart_related([(part, media_type) for part in parts], boundary)
    return body, f'multipart/related; type="{media_type}"; boundary={boundary}'


def multipart_related(parts: list[tuple[bytes, str]], boundary: str) -> bytes:
    """A multipart/related body (RFC 2387), as DICOMweb frames are sent."""
    chunks = []
    for content, media_type in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {media_type}\r\nContent-Length: {len(content)}\r\n\r\n".encode(),
                   content, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def frame_routes(tiles: TileService, gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(tags=["pixels"])
    current = principal_dependency(gatekeeper)

    @router.get("/api/slides/{slide_id}/pyramid", response_model=StoredPyramid, responses=errors(401, 404),
                summary="The stored levels, their tile grids and frame encodings")
    def stored_pyramid(slide_id: SlideId, caller: Principal = Depends(current)) -> StoredPyramid:
        gatekeeper.read_tile(caller, slide_id, "pyramid")  # every data-loader worker opens it: one entry per window
        slide = tiles.pyramid(slide_id).slide
        levels = []
        for index, ((width, height), downsample) in enumerate(zip(slide.level_dimensions, slide.level_downsamples,
                                                                  strict=True)):
            encoding = slide.frame_encoding(index)
            columns, rows = slide.tile_grid(index)
            levels.append(StoredLevel(
                width=width, height=height, downsample=downsample, tile_width=encoding.tile_width,
                tile_height=encoding.tile_height, columns=columns, rows=rows, transfer_syntax=encoding.transfer_syntax,
                media_type=encoding.media_type, photometric=encoding.photometric,
                samples_per_pixel=encoding.samples_per_pixel, bits_stored=encoding.bits_stored,
            ))
        return StoredPyramid(slide_id=slide_id, levels=levels, mpp=list(slide.mpp) if slide.mpp else None,
                             properties=dict(slide.properties), max_frames_per_request=max_frames(slide))

    @router.get(
        "/api/slides/{slide_id}/frames", response_class=Response, summary="Stored frames of one level, as stored",
        responses={200: {"content": {"multipart/related": {}}}, **errors(400, 401, 404)},
    )
    def stored_frames(
        slide_id: SlideId,
        request: Request,
        level: Annotated[int, Query(ge=0, le=64, description="Stored level (0: full resolution)")],
        tiles_asked: Annotated[str, Query(alias="tiles", pattern=TILE_LIST, max_length=MAX_FRAMES * 20,
                                          description=f"COLUMN_ROW,… (at most {MAX_FRAMES}), e.g. 0_0,1_0")],
        caller: Principal = Depends(current),
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        wanted = parse_tiles(tiles_asked)
        gatekeeper.slide_dataset(caller, slide_id)  # access first: a refused caller learns nothing more
        pyramid = tiles.pyramid(slide_id)
        if len(wanted) > (most := max_frames(pyramid.slide)):
            raise HTTPException(400, f"at most {most} frames of this slide per request")
        if level >= pyramid.slide.level_count:
            raise HTTPException(400, f"level {level} out of range (the slide has {pyramid.slide.level_count})")
        dataset = gatekeeper.read_tile(caller, slide_id, f"frames level {level}")
        headers = caching_headers(pyramid, f"{request.url.path}?{request.url.query}", gatekeeper.is_open(dataset))
        if not_modified(headers, if_none_match):
            return Response(status_code=304, headers=headers)
        try:
            body, content_type = frames_answer(pyramid.slide, level, wanted)
        except IndexError as error:
            raise HTTPException(400, str(error)) from error
        return Response(body, headers={**headers, "Content-Type": content_type})

    return router
