"""HTTP routes for pixels: Deep Zoom, IIIF Image API 3.0, overview. Thin: the tile service decides.

A stored slide never changes, so every answer carries an ETag derived from the slide's checksum
and the request path, and is answered 304 when the client already has it. But access does change:
pixels of open datasets may be cached for an hour, anyone's; pixels of controlled datasets only
privately and for a minute, after which the browser revalidates — through the gatekeeper, so a
revoked grant stops even cached tiles from being used for long.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from slidebank.access.principal import Principal
from slidebank.api.schemas import errors
from slidebank.api.security import Gatekeeper, principal_dependency
from slidebank.catalog.identifiers import SLIDE_ID_REGEX
from slidebank.tiles.deepzoom import dzi_xml
from slidebank.tiles.encode import MEDIA_TYPES
from slidebank.tiles.iiif import PROFILE_URI, info_json
from slidebank.tiles.pyramid import SlidePyramid
from slidebank.tiles.service import TileService

OPEN_CACHE_CONTROL = "public, max-age=3600"
CONTROLLED_CACHE_CONTROL = "private, max-age=60, must-revalidate"
SlideId = Annotated[str, Path(pattern=SLIDE_ID_REGEX, description="Slide identifier")]
CORS = {"Access-Control-Allow-Origin": "*"}  # IIIF clients (Mirador, OpenSeadragon) run on other origins
IIIF_HEADERS = {**CORS, "Link": f'<{PROFILE_URI}>;rel="profile"'}
IIIF_JSON_LD = 'application/ld+json;profile="http://iiif.io/api/image/3/context.json"'


def caching_headers(pyramid: SlidePyramid, path: str, open_data: bool,
                    extra: dict[str, str] | None = None) -> dict[str, str]:
    """Headers for any pixel answer: stored slides never change, so the path names the content;
    how long it may be kept depends on who may see it."""
    digest = hashlib.blake2s(path.encode(), digest_size=8).hexdigest()
    headers = {"ETag": f'"{pyramid.etag_base}-{digest}"',
               "Cache-Control": OPEN_CACHE_CONTROL if open_data else CONTROLLED_CACHE_CONTROL, **(extra or {})}
    if pyramid.last_modified:
        headers["Last-Modified"] = pyramid.last_modified
    return headers


def not_modified(headers: dict[str, str], if_none_match: str | None) -> bool:
    return if_none_match is not None and headers["ETag"] in {tag.strip() for tag in if_none_match.split(",")}


def _cached_response(
    pyramid: SlidePyramid,
    request: Request,
    open_data: bool,
    if_none_match: str | None,
    produce: Callable[[], tuple[bytes, str]],
    extra_headers: dict[str, str] | None = None,
) -> Response:
    headers = caching_headers(pyramid, request.url.path, open_data, extra_headers)
    if not_modified(headers, if_none_match):
        return Response(status_code=304, headers=headers)
    content, media_type = produce()
    return Response(content, media_type=media_type, headers=headers)


def tile_routes(tiles: TileService, gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(tags=["pixels"])
    current = principal_dependency(gatekeeper)

    @router.get("/slides/{slide_id}.dzi", response_class=Response, summary="Deep Zoom descriptor",
                responses={200: {"content": {"application/xml": {}}}, **errors(401, 404)})
    def deepzoom_descriptor(
        slide_id: SlideId,
        request: Request,
        caller: Principal = Depends(current),
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        dataset = gatekeeper.read_slide(caller, slide_id, "deepzoom.open")
        pyramid = tiles.pyramid(slide_id)
        return _cached_response(pyramid, request, gatekeeper.is_open(dataset), if_none_match,
                                lambda: (dzi_xml(pyramid).encode(), "application/xml"), CORS)

    @router.get(
        "/slides/{slide_id}_files/{level}/{col}_{row}.{extension}", response_class=Response, summary="Deep Zoom tile",
        responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, **errors(401, 404)},
    )
    def deepzoom_tile(
        slide_id: SlideId,
        level: Annotated[int, Path(ge=0, le=64)],
        col: Annotated[int, Path(ge=0)],
        row: Annotated[int, Path(ge=0)],
        extension: Annotated[str, Path(pattern=r"^(jpeg|jpg|png)$")],
        request: Request,
        caller: Principal = Depends(current),
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        dataset = gatekeeper.read_tile(caller, slide_id, f"deepzoom level {level}")
        pyramid = tiles.pyramid(slide_id)

        def produce() -> tuple[bytes, str]:
            tile = tiles.deepzoom_tile(slide_id, level, col, row, extension)
            return tile.content, MEDIA_TYPES[tile.media_format]

        return _cached_response(pyramid, request, gatekeeper.is_open(dataset), if_none_match, produce, CORS)

    @router.get("/iiif/3/{slide_id}", summary="IIIF image service base URI (redirects to info.json)",
                response_class=Response, status_code=303, responses={303: {"description": "to info.json"},
                                                                     **errors(401, 404)})
    def iiif_base(slide_id: SlideId, request: Request, caller: Principal = Depends(current)) -> Response:
        gatekeeper.slide_dataset(caller, slide_id)
        target = request.url_for("iiif_info", slide_id=slide_id)
        return RedirectResponse(str(target), status_code=303, headers=CORS)

    @router.get("/iiif/3/{slide_id}/info.json", name="iiif_info", summary="IIIF image information",
                response_class=Response,
                responses={200: {"content": {"application/json": {}, "application/ld+json": {}}}, **errors(401, 404)})
    def iiif_info(
        slide_id: SlideId,
        request: Request,
        caller: Principal = Depends(current),
        accept: Annotated[str | None, Header()] = None,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        dataset = gatekeeper.read_slide(caller, slide_id, "iiif.info")
        pyramid = tiles.pyramid(slide_id)
        service_id = str(request.url_for("iiif_base", slide_id=slide_id))
        media_type = IIIF_JSON_LD if accept and "application/ld+json" in accept else "application/json"

        def produce() -> tuple[bytes, str]:
            return bytes(JSONResponse(info_json(pyramid, service_id)).body), media_type

        return _cached_response(pyramid, request, gatekeeper.is_open(dataset), if_none_match, produce, IIIF_HEADERS)

    @router.get(
        "/iiif/3/{slide_id}/{region}/{size}/{rotation}/{quality_format}",
        response_class=Response,
        summary="IIIF image request",
        responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}, **errors(400, 401, 404)},
    )
    def iiif_image(
        slide_id: SlideId,
        region: str,
        size: str,
        rotation: str,
        quality_format: Annotated[str, Path(description="quality.format, e.g. default.jpg")],
        request: Request,
        caller: Principal = Depends(current),
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        dataset = gatekeeper.slide_dataset(caller, slide_id)
        pyramid = tiles.pyramid(slide_id)
        image = tiles.iiif_image(slide_id, region, size, rotation, quality_format)  # validated, bounded
        if image.level is not None:  # a stored tile, as viewers ask: aggregated per level like Deep Zoom's
            gatekeeper.read_tile(caller, slide_id, f"iiif level {image.level}")
        else:  # any other region is recorded as what it is
            gatekeeper.read_slide(caller, slide_id, "iiif.region", region=region, size=size, rotation=rotation,
                                  quality=quality_format)
        return _cached_response(pyramid, request, gatekeeper.is_open(dataset), if_none_match,
                                lambda: (image.content, MEDIA_TYPES[image.media_format]), IIIF_HEADERS)

    @router.get("/api/slides/{slide_id}/overview.jpg", response_class=Response, summary="Whole slide, ≤1024 px",
                responses={200: {"content": {"image/jpeg": {}}}, **errors(401, 404)})
    def overview(
        slide_id: SlideId,
        request: Request,
        caller: Principal = Depends(current),
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        dataset = gatekeeper.read_slide(caller, slide_id, "overview.read")
        pyramid = tiles.pyramid(slide_id)

        def produce() -> tuple[bytes, str]:
            return tiles.iiif_image(slide_id, "full", "!1024,1024", "0", "default.jpg").content, "image/jpeg"

        return _cached_response(pyramid, request, gatekeeper.is_open(dataset), if_none_match, produce)

    return router

