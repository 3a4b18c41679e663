"""Processing routes: algorithms, jobs (created against the caller's grants) and heatmaps.

A job is created here and run by the server's job loop (or any `slidebank jobs work`); callers see
their own jobs, administrators every job.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from slidebank.access.principal import Principal
from slidebank.algorithms.base import ParameterError, describe
from slidebank.algorithms.registry import UnknownAlgorithm, algorithms
from slidebank.api.schemas import errors
from slidebank.api.schemas_processing import Algorithm, Heatmap, Job, JobSummary, NewJob
from slidebank.api.security import Gatekeeper, principal_dependency, require_user
from slidebank.api.tiles import SlideId
from slidebank.jobs import JobError, JobNotFound
from slidebank.node import Node
from slidebank.processing.submit import submit_job
from slidebank.storage.crypt import unseal


def processing_routes(node: Node, gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(tags=["processing"])
    current = principal_dependency(gatekeeper)

    def user(caller: Principal = Depends(current)) -> Principal:
        return require_user(caller)

    def visible_job(caller: Principal, job_id: str) -> dict[str, Any]:
        try:
            job = node.jobs.get(job_id)
        except JobNotFound:
            raise HTTPException(404, "no such job") from None
        if job["requester"] != caller.name and caller.role != "administrator":
            raise HTTPException(404, "no such job")
        return job

    @router.get("/api/algorithms", response_model=list[Algorithm],
                summary="Installed algorithms, their parameters, inputs and outputs")
    def list_algorithms() -> list[dict[str, Any]]:
        return [describe(a) for a in algorithms().values()]

    @router.post("/api/jobs", status_code=201, response_model=JobSummary, responses=errors(400, 401, 403, 404, 413),
                 summary="Run an algorithm over slides or a dataset")
    def create_job(body: NewJob, caller: Principal = Depends(user)) -> dict[str, Any]:
        try:
            return submit_job(node.catalog, node.jobs, caller, body.algorithm, slide_ids=body.slides,
                              dataset=body.dataset, parameters=body.parameters, time_limit_s=body.time_limit_s,
                              memory_limit_mb=body.memory_limit_mb)
        except JobNotFound as error:
            raise HTTPException(404, str(error)) from None
        except (UnknownAlgorithm, ParameterError, JobError) as error:
            raise HTTPException(400, str(error)) from None

    @router.get("/api/jobs", response_model=list[JobSummary], responses=errors(400, 401),
                summary="My jobs (administrators: all jobs), newest first")
    def list_jobs(caller: Principal = Depends(user),
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        return node.jobs.list(None if caller.role == "administrator" else caller.name, limit)

    @router.get("/api/jobs/{job_id}", response_model=Job, responses=errors(401, 404),
                summary="A job with its tasks, timings, results and log")
    def get_job(job_id: str, caller: Principal = Depends(user)) -> dict[str, Any]:
        return visible_job(caller, job_id)

    @router.post("/api/jobs/{job_id}/cancel", response_model=JobSummary, responses=errors(401, 403, 404),
                 summary="Cancel a job")
    def cancel_job(job_id: str, caller: Principal = Depends(user)) -> dict[str, Any]:
        visible_job(caller, job_id)
        return node.jobs.cancel(job_id, caller.name)

    @router.get("/api/slides/{slide_id}/heatmaps", response_model=list[Heatmap], responses=errors(401, 404),
                summary="The slide's heatmaps (QC masks, scores)")
    def list_heatmaps(slide_id: SlideId, caller: Principal = Depends(current)) -> list[dict[str, Any]]:
        gatekeeper.read_tile(caller, slide_id, "heatmaps")
        return node.annotations.heatmaps(slide_id)

    @router.get("/api/slides/{slide_id}/heatmaps/{heatmap}.png", response_class=Response,
                summary="A heatmap as a transparent PNG covering its `extent` (level-0 pixels from the corner)",
                responses={200: {"content": {"image/png": {}}, "description": "A PNG with transparency"},
                           **errors(401, 404)})
    def heatmap(slide_id: SlideId, heatmap: str, caller: Principal = Depends(current)) -> Response:
        gatekeeper.read_slide(caller, slide_id, "heatmap.read", heatmap=heatmap)
        png = unseal(node.annotations.sealed_heatmap(slide_id, heatmap), node.keys)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-cache"})

    return router
