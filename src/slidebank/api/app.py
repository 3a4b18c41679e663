"""HTTP layer: a thin FastAPI app over the catalog and the store.

Serves the catalog as JSON (slides, datasets, search with facets), the pixel routes of
`api/tiles.py`, and the web app of `slidebank.web`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse

from slidebank import __version__
from slidebank.api.errors import install_error_handlers
from slidebank.api.fastpath import DeepZoomFastPath
from slidebank.api.tiles import tile_routes
from slidebank.catalog.service import SearchQuery
from slidebank.node import Node
from slidebank.tiles.service import TileService
from slidebank.web import mount_web


def create_app(node: Node | None = None) -> FastAPI:
    node = node or Node.open()
    app = FastAPI(title="Slidebank", version=__version__)
    app.state.tiles = TileService(node)
    app.include_router(tile_routes(app.state.tiles))
    install_error_handlers(app)
    app.add_middleware(DeepZoomFastPath, tiles=app.state.tiles)

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/datasets")
    def list_datasets() -> list[dict]:
        return node.catalog.datasets()

    @app.get("/api/datasets/{name}")
    def get_dataset(name: str) -> dict:
        """The dataset with what it holds: counts per species, organ, stain, vendor and diagnosis."""
        dataset = next((d for d in node.catalog.datasets() if d["name"] == name), None)
        if dataset is None:
            raise HTTPException(404, "no such dataset")
        contents = node.catalog.search(SearchQuery(dataset=[name], limit=1))
        return {**dataset, "facets": {k: v for k, v in contents.facets.items() if k != "dataset"}}

    @app.get("/api/slides")
    def list_slides() -> list[dict]:
        return node.catalog.list_slides()

    @app.get("/api/slides/{slide_id}")
    def get_slide(slide_id: str) -> dict:
        detail = node.catalog.get_slide(slide_id)
        if detail is None:
            raise HTTPException(404, "no such slide")
        return detail

    @app.get("/api/slides/{slide_id}/thumbnail.jpg")
    def thumbnail(slide_id: str) -> FileResponse:
        detail = node.catalog.get_slide(slide_id)
        if detail is None or not detail.get("thumbnail_sha256"):
            raise HTTPException(404, "no such slide")
        return FileResponse(node.store.blob_path(detail["thumbnail_sha256"]), media_type="image/jpeg")

    @app.get("/api/search")
    def search(
        dataset: Annotated[list[str] | None, Query()] = None,
        species: Annotated[list[str] | None, Query()] = None,
        organ: Annotated[list[str] | None, Query()] = None,
        stain: Annotated[list[str] | None, Query()] = None,
        vendor: Annotated[list[str] | None, Query()] = None,
        diagnosis: Annotated[list[str] | None, Query()] = None,
        text: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict:
        result = node.catalog.search(
            SearchQuery(
                dataset=dataset, species=species, organ=organ, stain=stain, vendor=vendor,
                diagnosis=diagnosis, text=text, limit=limit, offset=offset,
            )
        )
        return {"total": result.total, "items": result.items, "facets": result.facets}

    mount_web(app, node)
    return app
