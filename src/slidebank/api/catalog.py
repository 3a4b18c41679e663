"""Catalog routes: datasets (public descriptions), slides and search (only what the caller may read)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from slidebank.access.principal import Principal
from slidebank.api.schemas import errors
from slidebank.api.schemas_catalog import Dataset, DatasetDetail, SearchResult, SlideDetail, SlideSummary
from slidebank.api.security import Gatekeeper, principal_dependency
from slidebank.api.tiles import CONTROLLED_CACHE_CONTROL, OPEN_CACHE_CONTROL, SlideId
from slidebank.catalog import CatalogError, FactCondition, SearchQuery
from slidebank.node import Node
from slidebank.slides.stored import read_whole

DATASET_FACET_LIMIT = 100  # values per facet in a dataset's description
SIZE_BUCKET = 10  # controlled datasets' sizes, to those who may not read them, in steps of this


def public_description(dataset: dict[str, Any], caller: Principal) -> dict[str, Any]:
    """What anyone may know of a dataset. A controlled dataset the caller may not read shows its terms
    and its size rounded down to a multiple of SIZE_BUCKET, never what its slides are of: counts per
    diagnosis compared before and after an erasure would tell the erased person's diagnosis."""
    if caller.can_read(dataset["name"]):
        return {**dataset, "images_exact": True}
    return {**dataset, "images": dataset["images"] // SIZE_BUCKET * SIZE_BUCKET, "images_exact": False}


def catalog_routes(node: Node, gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(tags=["catalog"])
    current = principal_dependency(gatekeeper)

    @router.get("/api/datasets", response_model=list[Dataset], responses=errors(401),
                summary="Every dataset: public, dataset-level description")
    def list_datasets(caller: Principal = Depends(current)) -> list[dict[str, Any]]:
        return [public_description(d, caller) for d in node.catalog.datasets()]

    @router.get("/api/datasets/{name}", response_model=DatasetDetail, responses=errors(401, 404),
                summary="A dataset with its counts per species, organ, stain, … (controlled: for its readers only)")
    def get_dataset(name: str, caller: Principal = Depends(current)) -> dict[str, Any]:
        dataset = next((d for d in node.catalog.datasets() if d["name"] == name), None)
        if dataset is None:
            raise HTTPException(404, "no such dataset")
        if not caller.can_read(name):  # the declared description only: counts of slides are about people
            return {**public_description(dataset, caller), "facets": {}}
        contents = node.catalog.search(SearchQuery(dataset=[name], limit=1, facet_limit=DATASET_FACET_LIMIT))
        gatekeeper.record_listing(caller, "dataset.read", {name: contents.total})
        return {**dataset, "images_exact": True,
                "facets": {k: v for k, v in contents.facets.items() if k != "dataset"}}

    @router.get("/api/slides", response_model=list[SlideSummary], responses=errors(401),
                summary="Summaries of the slides the caller may read")
    def list_slides(caller: Principal = Depends(current)) -> list[dict[str, Any]]:
        slides = [s for s in node.catalog.list_slides() if caller.can_read(s["dataset"])]
        gatekeeper.record_listing(caller, "slides.list", dict(Counter(s["dataset"] for s in slides)))
        return slides

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
        dataset = gatekeeper.read_slide(caller, slide_id, "thumbnail.read")
        thumbnail = next((f for f in node.catalog.stored_files(slide_id) if f.role == "thumbnail"), None)
        if thumbnail is None:
            raise HTTPException(404, "no such slide")
        content = read_whole(thumbnail, node.open_blob)
        cache = OPEN_CACHE_CONTROL if gatekeeper.is_open(dataset) else CONTROLLED_CACHE_CONTROL
        return Response(content, media_type="image/jpeg", headers={"Cache-Control": cache})

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
        after: Annotated[str | None, Query(max_length=32, description="The `next` cursor of the previous page "
                                           "(keyset paging: as fast at any depth; offset is then ignored)")] = None,
        facet_limit: Annotated[int, Query(ge=1, le=100_000, description="The most values listed per facet, "
                                          "most frequent first; `facet_values` says how many there are")] = 20,
    ) -> dict[str, Any]:
        visible = None if caller.readable is None else sorted(caller.readable)
        try:
            conditions = FactCondition.parse_all(where) if where else ()
            result = node.catalog.search(SearchQuery(
                where=conditions, dataset=dataset, species=species, organ=organ, stain=stain, vendor=vendor,
                diagnosis=diagnosis, text=text, limit=limit, offset=offset, after=after, facet_limit=facet_limit,
                visible_datasets=visible,
            ))
        except CatalogError as error:
            raise HTTPException(400, str(error)) from None
        gatekeeper.record_listing(caller, "catalog.search", result.datasets,
                                  query={k: v for k, v in (("dataset", dataset), ("species", species), ("organ", organ),
                                                           ("stain", stain), ("vendor", vendor), ("diagnosis", diagnosis),
                                                           ("text", text), ("where", where)) if v})
        return {"total": result.total, "items": result.items, "facets": result.facets,
                "facet_values": result.facet_values, "next": result.next}

    return router
