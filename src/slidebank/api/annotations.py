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
from pydantic import TypeAdapter

from slidebank.access.principal import Principal
from slidebank.annotations.geojson import parse_document
from slidebank.annotations.service import Viewport
from slidebank.api.schemas import errors
from slidebank.api.schemas_annotations import (
    AnnotationClass,
    Created,
    Density,
    Feature,
    FeatureChange,
    FeatureCollection,
    FeatureExport,
)
from slidebank.api.security import Gatekeeper, principal_dependency, require_user
from slidebank.api.tiles import SlideId
from slidebank.node import Node

MAX_IMPORT_BYTES = 64 * 1024 * 1024
BBox = Annotated[str | None, Query(max_length=200, description="x0,y0,x1,y1 in level-0 pixels")]
Classes = Annotated[list[str] | None, Query(alias="class", description="Only these classes ('' = unclassified)")]


EXPORT = TypeAdapter(FeatureExport)


class GeoJSONResponse(JSONResponse):
    media_type = "application/geo+json"


def annotation_routes(node: Node, gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(tags=["annotations"])
    current = principal_dependency(gatekeeper)
    annotations = node.annotations

    @router.get("/api/slides/{slide_id}/annotations", response_model=FeatureCollection,
                responses=errors(400, 401, 404), summary="Features in a viewport (GeoJSON)")
    def query(
        slide_id: SlideId, caller: Principal = Depends(current), bbox: BBox = None, classes: Classes = None,
        limit: Annotated[int, Query(ge=0, le=50_000)] = 5000,
    ) -> dict[str, Any]:
        gatekeeper.read_tile(caller, slide_id, "annotations")
        viewport = Viewport.parse(bbox) if bbox else None
        features, total = annotations.query(slide_id, viewport, classes, limit)
        return {"type": "FeatureCollection", "features": features, "total": total, "truncated": total > len(features)}

    @router.get("/api/slides/{slide_id}/annotations/classes", response_model=list[AnnotationClass],
                responses=errors(401, 404), summary="Classes on the slide, with counts")
    def classes(slide_id: SlideId, caller: Principal = Depends(current)) -> list[dict[str, Any]]:
        gatekeeper.read_tile(caller, slide_id, "annotations")  # audited like viewport reads
        return annotations.classes(slide_id)

    @router.get("/api/slides/{slide_id}/annotations/density", response_model=Density,
                responses=errors(400, 401, 404),
                summary="Feature counts on a grid (zoomed out); default: the whole slide")
    def density(
        slide_id: SlideId, caller: Principal = Depends(current), bbox: BBox = None,
        columns: Annotated[int, Query(ge=1, le=256)] = 64, rows: Annotated[int, Query(ge=1, le=256)] = 64,
        classes: Classes = None,
    ) -> dict[str, Any]:
        gatekeeper.read_tile(caller, slide_id, "annotations")
        viewport = Viewport.parse(bbox) if bbox else annotations.slide_extent(slide_id)
        return annotations.density(slide_id, viewport, columns, rows, classes)

    @router.get("/api/slides/{slide_id}/annotations.geojson", response_model=FeatureExport,
                response_class=GeoJSONResponse, responses=errors(401, 404),
                summary="Every feature, as QuPath imports it")
    def export(slide_id: SlideId, caller: Principal = Depends(current)) -> Response:
        gatekeeper.slide_dataset(caller, slide_id)
        # Validated and written to JSON here, in one pass: FastAPI's fast path skips custom media types.
        collection = EXPORT.validate_python({"type": "FeatureCollection", "features": annotations.export(slide_id, caller)})
        return Response(EXPORT.dump_json(collection), media_type=GeoJSONResponse.media_type,
                        headers={"Content-Disposition": f'attachment; filename="{slide_id}.geojson"'})

    @router.post("/api/slides/{slide_id}/annotations", status_code=201, max_body_size=MAX_IMPORT_BYTES,
                 response_model=Created, responses=errors(400, 401, 403, 404, 413),
                 summary="Add a Feature, a FeatureCollection or a list of features (QuPath GeoJSON)")
    def create(
        slide_id: SlideId, document: Annotated[dict[str, Any] | list[Any], Body()],
        caller: Principal = Depends(current),
    ) -> dict[str, Any]:
        require_user(caller)
        gatekeeper.slide_dataset(caller, slide_id)
        features = parse_document(document)
        ids = annotations.add(slide_id, features, caller)
        return {"ids": ids, "features": [annotations.get(slide_id, i) for i in ids[:100]]}

    @router.put("/api/slides/{slide_id}/annotations/{feature_id}", response_model=Feature,
                responses=errors(400, 401, 403, 404, 413), summary="Change a feature (author or steward)")
    def update(slide_id: SlideId, feature_id: str, change: FeatureChange,
               caller: Principal = Depends(current)) -> dict[str, Any]:
        require_user(caller)
        gatekeeper.slide_dataset(caller, slide_id)
        return annotations.update(slide_id, feature_id, change.model_dump(exclude_unset=True), caller)

    @router.delete("/api/slides/{slide_id}/annotations/{feature_id}", status_code=204, response_class=Response,
                   responses=errors(401, 403, 404), summary="Delete a feature (author or steward)")
    def remove(slide_id: SlideId, feature_id: str, caller: Principal = Depends(current)) -> Response:
        require_user(caller)
        gatekeeper.slide_dataset(caller, slide_id)
        annotations.delete(slide_id, feature_id, caller)
        return Response(status_code=204)

    return router
