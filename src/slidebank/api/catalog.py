"""Catalog routes: datasets (public descriptions), slides and search (only what the caller may read)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from slidebank.access.principal import Principal
from slidebank.api.schemas import errors
from slidebank.api.schemas_catalog import Dataset, DatasetDetail, SearchResult, SlideDetail, SlideSummary
from slidebank.api.security import Gatekeeper, principal_dependency
from slidebank.api.tiles import SlideId
from slidebank.catalog import CatalogError, FactCondition, SearchQuery
from slidebank.node import Node
from slidebank.slides.stored import read_whole


def catalog_routes(node: Node, gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(tags=["catalog"])
    current = principal_dependency(gatekeeper)

    @router.get("/api/datasets", response_model=list[Dataset],
                summary="Every dataset: public, dataset-level description")
    def list_datasets() -> list[dict[str, Any]]:
        return node.catalog.datasets()

    @router.get("/api/datasets/{name}", response_model=DatasetDetail, responses=errors(404),
                summary="A dataset with its counts per species, organ, stain, …")
    def get_dataset(name: str) -> dict[str, Any]:
        dataset = next((d for d in node.catalog.datasets() if d["name"] == name), None)
        if dataset is None:
            raise HTTPException(404, "no such dataset")
        contents = node.catalog.search(SearchQuery(dataset=[name], limit=1))
        return {**dataset, "facets": {k: v for k, v in contents.facets.items() if k != "dataset"}}

    @router.get("/api/slides", response_model=list[SlideSummary], responses=errors(401),
                summary="Summaries of the slides the caller may read")
    def list_slides(caller: Principal = Depends(current)) -> list[dict[str, Any]]:
        return [s for s in node.catalog.list_slides() if caller.can_read(s["dataset"])]

    @router.get("/api/slides/{slide_id}", response_model=SlideDetail, responses=errors(401, 404),
                summary="Slide metadata and provenance")
    def get_slide(slide_id: SlideId, caller: Principal = Depends(current)) -> dict[str, Any]:
        gatekeeper.read_slide(caller, slide_id, "metadata.read")
        detail = node.catalog.get_slide(slide_id)
        if detail is None:
            raise HTTPException(404, "no such slide")
        return detail

    @router.get("/api/slides/{slide_id}/thumbnail.jpg", response_class=Response, summary="Thumbnail",
                responses={200: {"content": {"image/jpeg": {}}, "description": "A JPEG, at most 512 px"},
                           **errors(401, 404)})
    def thumbnail(slide_id: SlideId, caller: Principal = Depends(current)) -> Response:
        gatekeeper.read_slide(caller, slide_id, "thumbnail.read")
        thumbnail = next((f for f in node.catalog.stored_files(slide_id) if f.role == "thumbnail"), None)
        if thumbnail is None:
            raise HTTPException(404, "no such slide")
        content = read_whole(thumbnail, node.open_blob)
        return Response(content, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/api/search", response_model=SearchResult, responses=errors(400, 401),
                summary="Faceted search over the slides the caller may read")
    def search(
        caller: Principal = Depends(current),
        dataset: Annotated[list[str] | None, Query()] = None,
        species: Annotated[list[str] | None, Query()] = None,
        organ: Annotated[list[str] | None, Query()] = None,
        stain: Annotated[list[str] | None, Query()] = None,
        vendor: Annotated[list[str] | None, Query()] = None,
        diagnosis: Annotated[list[str] | None, Query()] = None,
        text: Annotated[str | None, Query(max_length=200)] = None,
        where: Annotated[str | None, Query(max_length=1000, description="e.g. qc.blur_fraction < 0.05")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    ) -> dict[str, Any]:
        visible = None if caller.readable is None else sorted(caller.readable)
        try:
            conditions = FactCondition.parse_all(where) if where else ()
        except CatalogError as error:
            raise HTTPException(400, str(error)) from None
        result = node.catalog.search(
            SearchQuery(
                where=conditions, dataset=dataset, species=species, organ=organ, stain=stain, vendor=vendor,
                diagnosis=diagnosis, text=text, limit=limit, offset=offset, visible_datasets=visible,
            )
        )
        return {"total": result.total, "items": result.items, "facets": result.facets}

    return router
