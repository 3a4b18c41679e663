"""DICOMweb (PS3.18) under /dicomweb: QIDO-RS search and WADO-RS retrieval of the stored files.

For viewers and libraries that speak DICOMweb (Slim and dicom-microscopy-viewer, wsidicom,
dicomweb-client, QuPath): the same gatekeeper, audit and encryption as the tile routes. Searches are
audited per controlled dataset they showed; frames, metadata and renderings like tile reads (one
entry per window); whole instances as a retrieval of the slide. What is searched and served is the
domain's (`slidebank.dicomweb`); this module speaks HTTP: parameters, Accept, multipart bodies.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from slidebank.access.principal import Principal
from slidebank.api.frames import BOUNDARY, multipart_related
from slidebank.api.schemas import errors
from slidebank.api.security import Gatekeeper, principal_dependency
from slidebank.api.tiles import caching_headers, not_modified
from slidebank.dicomweb import search as qido
from slidebank.dicomweb.attributes import Level
from slidebank.dicomweb.negotiation import FrameAnswer, NotAcceptable, frame_answer, instance_answer, media_ranges
from slidebank.dicomweb.service import DicomWeb, NotRenderable, StoredInstance, as_encoded
from slidebank.dicomweb.transcode import transcode
from slidebank.tiles.service import TileService

PREFIX = "/dicomweb"
DICOM_JSON = "application/dicom+json"
MAX_FRAMES = 64  # frames one request may ask for
UID = Annotated[str, Path(pattern=r"^[0-9.]{1,64}$", description="A DICOM UID")]
FrameList = Annotated[str, Path(pattern=r"^\d{1,9}(,\d{1,9}){0,63}$", description="Frame numbers from 1, e.g. 1,2,3")]
Viewport = Annotated[str | None, Query(pattern=r"^\d{1,5},\d{1,5}$", description="WIDTH,HEIGHT to fit the image in")]
Quality = Annotated[int, Query(ge=1, le=100, description="JPEG quality")]
_JSON_ANSWER: dict[int | str, dict[str, Any]] = {200: {"content": {DICOM_JSON: {}}}}
SEARCHED = {**_JSON_ANSWER, **errors(400, 401, 404)}  # 404: a malformed UID in the path
DESCRIBED = {**_JSON_ANSWER, **errors(401, 404)}
RETRIEVED: dict[int | str, dict[str, Any]] = {200: {"content": {"multipart/related": {}}}, **errors(401, 404, 406)}
FRAMES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"multipart/related": {}, "image/jpeg": {}, "image/jls": {}, "image/jp2": {}}},
    304: {"description": "Not modified"}, **errors(401, 404, 406)}
RENDERED: dict[int | str, dict[str, Any]] = {200: {"content": {"image/jpeg": {}, "image/png": {}}},
                                             **errors(400, 401, 404, 406)}


def dicomweb_routes(service: DicomWeb, tiles: TileService, gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
    current = principal_dependency(gatekeeper)

    # --- QIDO-RS ----------------------------------------------------------------------------------

    def search(level: Level, request: Request, caller: Principal, scope: dict[str, str]) -> Response:
        try:
            query = qido.parse(level, list(request.query_params.multi_items()), scope)
        except qido.QueryError as error:
            raise HTTPException(400, str(error)) from error
        answer = service.search(query, caller.readable)
        gatekeeper.record_listing(caller, "dicomweb.search", dict(answer.per_dataset), level=level)
        headers = {"Warning": f'299 slidebank "The following parameters did not narrow the search: '
                              f'{", ".join(query.ignored)}"'} if query.ignored else {}
        return JSONResponse(answer.results, media_type=DICOM_JSON, headers=headers)

    @router.get("/studies", responses=SEARCHED, summary="QIDO-RS: search for studies")
    def search_studies(request: Request, caller: Principal = Depends(current)) -> Response:
        return search("study", request, caller, {})

    @router.get("/series", responses=SEARCHED, summary="QIDO-RS: search for series")
    def search_all_series(request: Request, caller: Principal = Depends(current)) -> Response:
        return search("series", request, caller, {})

    @router.get("/studies/{study}/series", responses=SEARCHED, summary="QIDO-RS: search a study's series")
    def search_series(study: UID, request: Request, caller: Principal = Depends(current)) -> Response:
        return search("series", request, caller, {"StudyInstanceUID": study})

    @router.get("/instances", responses=SEARCHED, summary="QIDO-RS: search for instances")
    def search_all_instances(request: Request, caller: Principal = Depends(current)) -> Response:
        return search("instance", request, caller, {})

    @router.get("/studies/{study}/instances", responses=SEARCHED, summary="QIDO-RS: search a study's instances")
    def search_study_instances(study: UID, request: Request, caller: Principal = Depends(current)) -> Response:
        return search("instance", request, caller, {"StudyInstanceUID": study})

    @router.get("/studies/{study}/series/{series}/instances", responses=SEARCHED,
                summary="QIDO-RS: search a series' instances")
    def search_series_instances(study: UID, series: UID, request: Request,
                                caller: Principal = Depends(current)) -> Response:
        return search("instance", request, caller, {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    # --- WADO-RS: instances and metadata ----------------------------------------------------------

    def retrieve(caller: Principal, accept: str | None, study: str, series: str | None = None,
                 sop: str | None = None) -> Response:
        instances = service.instances(caller.readable, study, series, sop)
        try:
            for instance in instances:
                instance_answer(accept, instance.transfer_syntax)
        except NotAcceptable as error:
            raise HTTPException(406, str(error)) from error
        for slide_id in dict.fromkeys(instance.slide_id for instance in instances):
            gatekeeper.read_slide(caller, slide_id, "dicomweb.retrieve",
                                  instances=sum(1 for i in instances if i.slide_id == slide_id))
        boundary = secrets.token_hex(16)
        return StreamingResponse(_multipart_instances(service, instances, boundary),
                                 media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')

    @router.get("/studies/{study}", response_class=Response, responses=RETRIEVED, summary="WADO-RS: a study's instances")
    def retrieve_study(study: UID, caller: Principal = Depends(current),
                       accept: Annotated[str | None, Header()] = None) -> Response:
        return retrieve(caller, accept, study)

    @router.get("/studies/{study}/series/{series}", response_class=Response, responses=RETRIEVED,
                summary="WADO-RS: a series' instances")
    def retrieve_series(study: UID, series: UID, caller: Principal = Depends(current),
                        accept: Annotated[str | None, Header()] = None) -> Response:
        return retrieve(caller, accept, study, series)

    @router.get("/studies/{study}/series/{series}/instances/{sop}", response_class=Response, responses=RETRIEVED,
                summary="WADO-RS: one instance, as stored")
    def retrieve_instance(study: UID, series: UID, sop: UID, caller: Principal = Depends(current),
                          accept: Annotated[str | None, Header()] = None) -> Response:
        return retrieve(caller, accept, study, series, sop)

    def metadata(request: Request, caller: Principal, study: str, series: str | None = None,
                 sop: str | None = None) -> Response:
        instances = service.instances(caller.readable, study, series, sop)
        results = []
        for instance in instances:
            gatekeeper.read_tile(caller, instance.slide_id, "dicomweb metadata")
            base = public_base(request) + _instance_path(instance) + "/bulkdata"
            results.append(service.metadata(instance, base))
        return JSONResponse(results, media_type=DICOM_JSON)

    @router.get("/studies/{study}/metadata", responses=DESCRIBED, summary="WADO-RS: a study's metadata")
    def study_metadata(study: UID, request: Request, caller: Principal = Depends(current)) -> Response:
        return metadata(request, caller, study)

    @router.get("/studies/{study}/series/{series}/metadata", responses=DESCRIBED,
                summary="WADO-RS: a series' metadata")
    def series_metadata(study: UID, series: UID, request: Request, caller: Principal = Depends(current)) -> Response:
        return metadata(request, caller, study, series)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/metadata", responses=DESCRIBED,
                summary="WADO-RS: an instance's metadata (large binary values as BulkDataURI)")
    def instance_metadata(study: UID, series: UID, sop: UID, request: Request,
                          caller: Principal = Depends(current)) -> Response:
        return metadata(request, caller, study, series, sop)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path:path}", response_class=Response,
                responses={200: {"content": {"multipart/related": {}}}, **errors(401, 404)},
                summary="WADO-RS: a large binary value named in the metadata")
    def bulkdata(study: UID, series: UID, sop: UID, path: Annotated[str, Path(pattern=r"^[0-9A-F]{8}(/\d{1,6}/[0-9A-F]{8})*$")],
                 caller: Principal = Depends(current)) -> Response:
        [instance] = service.instances(caller.readable, study, series, sop)
        gatekeeper.read_tile(caller, instance.slide_id, "dicomweb metadata")
        try:
            value = service.bulkdata(instance, path)
        except KeyError as error:
            raise HTTPException(404, f"no bulk data at {path}") from error
        body = multipart_related([(value, "application/octet-stream")], BOUNDARY)
        return Response(body, media_type=f'multipart/related; type="application/octet-stream"; boundary={BOUNDARY}')

    # --- WADO-RS: frames --------------------------------------------------------------------------

    @router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}", response_class=Response, responses=FRAMES,
                summary="WADO-RS: frames, as stored or transcoded as the Accept header asks")
    def retrieve_frames(study: UID, series: UID, sop: UID, frames: FrameList, request: Request,
                        caller: Principal = Depends(current), accept: Annotated[str | None, Header()] = None,
                        if_none_match: Annotated[str | None, Header()] = None) -> Response:
        numbers = [int(number) for number in frames.split(",")]
        [instance] = service.instances(caller.readable, study, series, sop)
        try:
            answer = frame_answer(accept, instance.transfer_syntax, len(numbers), instance.media_type)
        except NotAcceptable as error:
            raise HTTPException(406, str(error)) from error
        dataset = gatekeeper.read_tile(caller, instance.slide_id, frames_audit_place(instance))
        headers = caching_headers(tiles.pyramid(instance.slide_id), f"{request.url.path}|{accept}",
                                  gatekeeper.is_open(dataset))
        if not_modified(headers, if_none_match):
            return Response(status_code=304, headers=headers)
        try:
            stored = service.frames(instance, numbers)
        except IndexError as error:
            raise HTTPException(404, str(error)) from error
        if answer.transcode:
            stored = [transcode(frame, instance.encoding, answer.transfer_syntax) for frame in stored]
        body, content_type = frames_body(stored, answer)
        return Response(body, headers={**headers, "Content-Type": content_type})

    # --- WADO-RS: rendered images and thumbnails --------------------------------------------------

    def rendered(caller: Principal, accept: str | None, viewport: str | None, quality: int, study: str,
                 series: str, sop: str, frame: int | None, thumbnail: bool = False) -> Response:
        media_type = _rendered_type(accept)
        [instance] = service.instances(caller.readable, study, series, sop)
        gatekeeper.read_tile(caller, instance.slide_id, "dicomweb rendered")
        size = _viewport(viewport)
        try:
            if thumbnail and frame is None:
                image = service.thumbnail(instance.slide_id, size or (256, 256))
            else:
                image = service.rendered(instance, size, frame)
        except NotRenderable as error:
            raise HTTPException(400, str(error)) from error
        except IndexError as error:
            raise HTTPException(404, str(error)) from error
        return Response(as_encoded(image, media_type, quality), media_type=media_type)

    instance_path = "/studies/{study}/series/{series}/instances/{sop}"

    @router.get(instance_path + "/rendered", response_class=Response, responses=RENDERED,
                summary="WADO-RS: the instance as an image")
    def rendered_instance(study: UID, series: UID, sop: UID, caller: Principal = Depends(current),
                          accept: Annotated[str | None, Header()] = None, viewport: Viewport = None,
                          quality: Quality = 90) -> Response:
        return rendered(caller, accept, viewport, quality, study, series, sop, None)

    @router.get(instance_path + "/frames/{frame}/rendered", response_class=Response, responses=RENDERED,
                summary="WADO-RS: one frame as an image")
    def rendered_frame(study: UID, series: UID, sop: UID, frame: Annotated[int, Path(ge=1, le=10**9)],
                       caller: Principal = Depends(current), accept: Annotated[str | None, Header()] = None,
                       viewport: Viewport = None, quality: Quality = 90) -> Response:
        return rendered(caller, accept, viewport, quality, study, series, sop, frame)

    @router.get(instance_path + "/thumbnail", response_class=Response, responses=RENDERED,
                summary="WADO-RS: the instance's thumbnail")
    def instance_thumbnail(study: UID, series: UID, sop: UID, caller: Principal = Depends(current),
                           accept: Annotated[str | None, Header()] = None, viewport: Viewport = None,
                           quality: Quality = 90) -> Response:
        return rendered(caller, accept, viewport, quality, study, series, sop, None, thumbnail=True)

    @router.get(instance_path + "/frames/{frame}/thumbnail", response_class=Response, responses=RENDERED,
                summary="WADO-RS: a frame's thumbnail")
    def frame_thumbnail(study: UID, series: UID, sop: UID, frame: Annotated[int, Path(ge=1, le=10**9)],
                        caller: Principal = Depends(current), accept: Annotated[str | None, Header()] = None,
                        viewport: Viewport = None, quality: Quality = 90) -> Response:
        return rendered(caller, accept, viewport or "128,128", quality, study, series, sop, frame, thumbnail=True)

    def slide_thumbnail(caller: Principal, accept: str | None, viewport: str | None, quality: int, study: str,
                        series: str | None) -> Response:
        media_type = _rendered_type(accept)
        instance = service.instances(caller.readable, study, series)[0]
        gatekeeper.read_tile(caller, instance.slide_id, "dicomweb rendered")
        image = service.thumbnail(instance.slide_id, _viewport(viewport) or (256, 256))
        return Response(as_encoded(image, media_type, quality), media_type=media_type)

    @router.get("/studies/{study}/thumbnail", response_class=Response, responses=RENDERED,
                summary="WADO-RS: the study's thumbnail")
    def study_thumbnail(study: UID, caller: Principal = Depends(current),
                        accept: Annotated[str | None, Header()] = None, viewport: Viewport = None,
                        quality: Quality = 90) -> Response:
        return slide_thumbnail(caller, accept, viewport, quality, study, None)

    @router.get("/studies/{study}/series/{series}/thumbnail", response_class=Response, responses=RENDERED,
                summary="WADO-RS: the series' thumbnail")
    def series_thumbnail(study: UID, series: UID, caller: Principal = Depends(current),
                         accept: Annotated[str | None, Header()] = None, viewport: Viewport = None,
                         quality: Quality = 90) -> Response:
        return slide_thumbnail(caller, accept, viewport, quality, study, series)

    return router


FRAMES_PATH = re.compile(rf"^{PREFIX}/studies/(?P<study>[0-9.]{{1,64}})/series/(?P<series>[0-9.]{{1,64}})"
                         r"/instances/(?P<sop>[0-9.]{1,64})/frames/(?P<frames>\d{1,9}(?:,\d{1,9}){0,15})$")


def frames_audit_place(instance: StoredInstance) -> str:
    """Where a frame read is audited (per window): the same for the route and the fast path."""
    return f"dicomweb frames {instance.file.level}"


def frames_body(frames: list[bytes], answer: FrameAnswer) -> tuple[bytes, str]:
    """The body and content type of a frames answer (the route and the fast path send the same)."""
    if not answer.multipart:
        return frames[0], answer.media_type
    part_type = f"{answer.media_type}; transfer-syntax={answer.transfer_syntax}"
    body = multipart_related([(frame, part_type) for frame in frames], BOUNDARY)
    return body, (f'multipart/related; type="{answer.media_type}"; transfer-syntax={answer.transfer_syntax}; '
                  f"boundary={BOUNDARY}")


def public_base(request: Request) -> str:
    """Where clients reach this server, for the BulkDataURIs of metadata: SLIDEBANK_PUBLIC_URL when set
    (behind a proxy), else the request's own. dicomweb-client sends `Host` without the port: when
    no proxy says otherwise, the port is the one the request arrived on."""
    configured = os.environ.get("SLIDEBANK_PUBLIC_URL")
    if configured:
        return configured.rstrip("/")
    base = request.base_url
    host = request.headers.get("host", "")
    server = request.scope.get("server")
    if ":" not in host and "x-forwarded-host" not in request.headers and server and base.port is None \
            and server[1] not in (80, 443):
        base = base.replace(port=server[1])
    return str(base).rstrip("/")


def _instance_path(instance: StoredInstance) -> str:
    return f"{PREFIX}/studies/{instance.study_uid}/series/{instance.series_uid}/instances/{instance.sop_instance_uid}"


def _viewport(viewport: str | None) -> tuple[int, int] | None:
    if viewport is None:
        return None
    width, height = (int(value) for value in viewport.split(","))
    if not (width and height):
        raise HTTPException(400, "viewport must be two positive numbers")
    return width, height


def _rendered_type(accept: str | None) -> str:
    for media_range in media_ranges(accept):
        if media_range.media_type in ("image/jpeg", "image/png"):
            return media_range.media_type
        if media_range.media_type in ("*/*", "image/*"):
            return "image/jpeg"
    raise HTTPException(406, "rendered images are image/jpeg or image/png")


def _multipart_instances(service: DicomWeb, instances: list[StoredInstance], boundary: str) -> Iterator[bytes]:
    for instance in instances:
        yield (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={instance.transfer_syntax}\r\n"
               f"Content-Length: {instance.file.size}\r\n\r\n").encode()
        yield from service.stream(instance)
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


