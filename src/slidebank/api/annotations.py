"""Annotation routes: viewport queries, density grids, QuPath GeoJSON export, and edits.

Rights: whoever may read a slide may read its annotations and add their own (annotating needs no
write access to the slide); changing or deleting a feature is for its author, a data steward of the
slide's dataset, or an administrator. Viewport reads are audited like tile reads (aggregated per
window), changes one by one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from slidebank.access.principal import Principal
from slidebank.annotations.geojson import parse_document
from slidebank.annotations.service import Viewport
from slidebank.api.security import Gatekeeper, principal_dependency, require_user
from slidebank.api.tiles import SlideId
from slidebank.node import Node

MAX_IMPORT_BYTES = 64 * 1024 * 1024
BBox = Annotated[str | None, Query(max_length=200, description="x0,y0,x1,y1 in level-0 pixels")]
Classes = Annotated[list[str] | None, Query(alias="class", description="Only these classes ('' = unclassified)")]


class FeatureChange(BaseModel):
    geometry: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    class_name: str | None = Field(default=None, max_length=255)
    color: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")


def annotation_routes(node: Node, gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(tags=["annotations"])
    current = principal_dependency(gatekeeper)
    annotations = node.annotations

    @router.get("/api/slides/{slide_id}/annotations", summary="Features in a viewport (GeoJSON)")
    def query(
        slide_id: SlideId, caller: Principal = Depends(current), bbox: BBox = None, classes: Classes = None,
        limit: Annotated[int, Query(ge=0, le=50_000)] = 5000,
    ) -> dict:
        gatekeeper.read_tile(caller, slide_id, "annotations")
        viewport = Viewport.parse(bbox) if bbox else None
        features, total = annotations.query(slide_id, viewport, classes, limit)
        return {"type": "FeatureCollection", "features": features, "total": total, "truncated": total > len(features)}

    @router.get("/api/slides/{slide_id}/annotations/classes", summary="Classes on the slide, with counts")
    def classes(slide_id: SlideId, caller: Principal = Depends(current)) -> list[dict]:
        gatekeeper.slide_dataset(caller, slide_id)
        return annotations.classes(slide_id)

    @router.get("/api/slides/{slide_id}/annotations/density", summary="Feature counts on a grid (zoomed out); default: the whole slide")
    def density(
        slide_id: SlideId, caller: Principal = Depends(current), bbox: BBox = None,
        columns: Annotated[int, Query(ge=1, le=256)] = 64, rows: Annotated[int, Query(ge=1, le=256)] = 64,
        classes: Classes = None,
    ) -> dict:
        gatekeeper.read_tile(caller, slide_id, "annotations")
        viewport = Viewport.parse(bbox) if bbox else annotations.slide_extent(slide_id)
        return annotations.density(slide_id, viewport, columns, rows, classes)

    @router.get("/api/slides/{slide_id}/annotations.geojson", summary="Every feature, as QuPath imports it",
                response_class=JSONResponse,
                responses={200: {"content": {"application/geo+json": {"schema": {"type": "object"}}}}})
    def export(slide_id: SlideId, caller: Principal = Depends(current)) -> JSONResponse:
        gatekeeper.slide_dataset(caller, slide_id)
        collection = {"type": "FeatureCollection", "features": annotations.export(slide_id, caller)}
        return JSONResponse(collection, media_type="application/geo+json",
                            headers={"Content-Disposition": f'attachment; filename="{slide_id}.geojson"'})

    @router.post("/api/slides/{slide_id}/annotations", status_code=201, max_body_size=MAX_IMPORT_BYTES,
                 summary="Add a Feature, a FeatureCollection or a list of features (QuPath GeoJSON)")
    def create(
        slide_id: SlideId, document: Annotated[dict[str, Any] | list[Any], Body()],
        caller: Principal = Depends(current),
    ) -> dict:
        require_user(caller)
        gatekeeper.slide_dataset(caller, slide_id)
        features = parse_document(document)
        ids = annotations.add(slide_id, features, caller)
        return {"ids": ids, "features": [annotations.get(slide_id, i) for i in ids[:100]]}

    @router.put("/api/slides/{slide_id}/annotations/{feature_id}", summary="Change a feature (author or steward)")
    def update(slide_id: SlideId, feature_id: str, change: FeatureChange, caller: Principal = Depends(current)) -> dict:
        require_user(caller)
        gatekeeper.slide_dataset(caller, slide_id)
        return annotations.update(slide_id, feature_id, change.model_dump(exclude_unset=True), caller)

    @router.delete("/api/slides/{slide_id}/annotations/{feature_id}", status_code=204, response_class=Response,
                   summary="Delete a feature (author or steward)")
    def remove(slide_id: SlideId, feature_id: str, caller: Principal = Depends(current)) -> Response:
        require_user(caller)
        gatekeeper.slide_dataset(caller, slide_id)
        annotations.delete(slide_id, feature_id, caller)
        return Response(status_code=204)

    return router
