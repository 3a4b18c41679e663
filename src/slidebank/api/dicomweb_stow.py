"""STOW-RS under /dicomweb: `POST /studies` (multipart/related DICOM) into a named dataset.

For administrators and the dataset's data stewards. The body is streamed part by part into a private
upload folder (python-multipart's streaming parser: nothing is held in memory), then handed to the
ingest pipeline (`ingest.stow`); the folder goes when the request ends. The answer is PS3.18's: a
DICOM JSON object listing stored instances (ReferencedSOPSequence, with the URL of the series they
are now part of and a coercion warning, since de-identification gives them new UIDs) and failed
ones (FailedSOPSequence with a FailureReason; the reasons in words in the Warning header).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from slidebank.access.principal import Principal
from slidebank.api.dicomweb import DICOM_JSON, PREFIX, UID, public_base
from slidebank.api.schemas import errors
from slidebank.api.security import Gatekeeper, principal_dependency, require_user
from slidebank.dicomweb.service import DicomWeb
from slidebank.ingest.multipart import BadMultipart, PartsToFiles, boundary_of
from slidebank.ingest.stow import StowResult, store_received, upload_folder
from slidebank.node import Node

MAX_STOW_BYTES = int(float(os.environ.get("SLIDEBANK_STOW_MAX_GB", "64")) * 2**30)
COERCED = 0xB000  # WarningReason: coercion of data elements (new UIDs, de-identified)
STORED: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every instance stored", "content": {DICOM_JSON: {}}},
    202: {"description": "Some instances stored, some not (FailedSOPSequence)", "content": {DICOM_JSON: {}}},
    409: {"description": "No instance stored (FailedSOPSequence says why)", "content": {DICOM_JSON: {}}},
    **errors(400, 401, 403, 404, 413, 415),  # 404: a malformed UID or dataset name in the path
}
DatasetQuery = Annotated[str, Query(min_length=1, max_length=255, description="The dataset to store into")]
DatasetPath = Annotated[str, Path(min_length=1, max_length=255, description="The dataset to store into")]


def stow_routes(node: Node, service: DicomWeb, gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
    current = principal_dependency(gatekeeper)

    async def store(request: Request, caller: Principal, dataset: str, study: str | None) -> Response:
        require_user(caller)
        if not caller.moderates(dataset) or dataset not in {d["name"] for d in node.catalog.datasets()}:
            raise HTTPException(403, f"only administrators and data stewards of {dataset!r} store into it")
        try:
            boundary = boundary_of(request.headers.get("content-type", ""))
        except BadMultipart as error:
            raise HTTPException(415, f'STOW-RS takes multipart/related; type="application/dicom": {error}') from error
        folder = upload_folder(node.settings.home)
        try:
            try:
                parts = await _receive(request, boundary, folder)
            except BadMultipart as error:
                raise HTTPException(400, str(error)) from error
            if not parts:
                raise HTTPException(400, "the body holds no part")
            results = await run_in_threadpool(store_received, node, parts, dataset, caller, study_uid=study)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return _answer(results, service, public_base(request))

    @router.post("/studies", response_class=Response, responses=STORED, max_body_size=MAX_STOW_BYTES,
                 summary="STOW-RS: store instances into a dataset (stewards, administrators)")
    async def store_instances(request: Request, dataset: DatasetQuery,
                              caller: Principal = Depends(current)) -> Response:
        return await store(request, caller, dataset, None)

    @router.post("/studies/{study}", response_class=Response, responses=STORED, max_body_size=MAX_STOW_BYTES,
                 summary="STOW-RS: store instances of one study into a dataset")
    async def store_study_instances(study: UID, request: Request, dataset: DatasetQuery,
                                    caller: Principal = Depends(current)) -> Response:
        return await store(request, caller, dataset, study)

    # The same with the dataset in the path: a STOW-RS root per dataset, for clients that cannot add
    # a query parameter (dicomweb-client: `DICOMwebClient(url, stow_url_prefix="datasets/NAME")`).
    @router.post("/datasets/{dataset}/studies", response_class=Response, responses=STORED, max_body_size=MAX_STOW_BYTES,
                 summary="STOW-RS: store instances into the dataset of the path")
    async def store_into(dataset: DatasetPath, request: Request, caller: Principal = Depends(current)) -> Response:
        return await store(request, caller, dataset, None)

    @router.post("/datasets/{dataset}/studies/{study}", response_class=Response, responses=STORED, max_body_size=MAX_STOW_BYTES,
                 summary="STOW-RS: store instances of one study into the dataset of the path")
    async def store_study_into(dataset: DatasetPath, study: UID, request: Request,
                               caller: Principal = Depends(current)) -> Response:
        return await store(request, caller, dataset, study)

    return router


async def _receive(request: Request, boundary: str, folder: FilePath) -> list[FilePath]:
    """Each part of the body, written to its own file in `folder` as it arrives."""
    writer = PartsToFiles(boundary, folder)
    async for chunk in request.stream():
        await run_in_threadpool(writer.feed, chunk)
    return writer.close()


def _answer(results: list[StowResult], service: DicomWeb, base: str) -> Response:
    referenced, failed, warnings = [], [], []
    series: dict[str, tuple[str, str] | None] = {}
    for result in results:
        item: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [result.sop_class_uid]} if result.sop_class_uid
                                else {"vr": "UI"},
                                "00081155": {"vr": "UI", "Value": [result.sop_instance_uid]} if result.sop_instance_uid
                                else {"vr": "UI"}}
        if result.stored and result.slide_id:
            if result.slide_id not in series:
                series[result.slide_id] = service.series_of(result.slide_id)
            stored_in = series[result.slide_id]
            if stored_in:
                item["00081190"] = {"vr": "UR", "Value": [f"{base}{PREFIX}/studies/{stored_in[0]}/series/{stored_in[1]}"]}
            item["00081196"] = {"vr": "US", "Value": [COERCED]}
            referenced.append(item)
        else:
            item["00081197"] = {"vr": "US", "Value": [result.failure_code or 0xC000]}
            failed.append(item)
            warnings.append(f"{result.sop_instance_uid or 'a part'}: {result.reason}")
    body: dict[str, Any] = {}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else 202 if referenced else 409
    headers = {}
    if warnings:
        text = "; ".join(dict.fromkeys(warnings))[:4000].replace('"', "'").encode("ascii", "replace").decode()
        headers["Warning"] = f'299 slidebank "{text}"'
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON, headers=headers)
