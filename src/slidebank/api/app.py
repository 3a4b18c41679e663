"""HTTP layer: a thin FastAPI app over the catalog and the store.

Serves the catalog as JSON (slides, datasets, search with facets), the pixel routes of
`api/tiles.py`, and the web app of `slidebank.web`.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

from slidebank import __version__
from slidebank.access.oidc import OidcVerifier
from slidebank.api.access import access_routes
from slidebank.api.annotations import annotation_routes
from slidebank.api.catalog import catalog_routes
from slidebank.api.dicomweb import dicomweb_routes
from slidebank.api.dicomweb_stow import stow_routes
from slidebank.api.errors import install_error_handlers
from slidebank.api.exports import export_routes
from slidebank.api.fastpath import PixelFastPath
from slidebank.api.frames import frame_routes
from slidebank.api.middleware import DicomwebCors, HeadAsGet, SecurityHeaders, watch_governance
from slidebank.api.processing import processing_routes
from slidebank.api.schemas import Health
from slidebank.api.security import Gatekeeper
from slidebank.api.tiles import tile_routes
from slidebank.dicomweb.service import DicomWeb
from slidebank.ingest.stow import clear_stale_uploads
from slidebank.node import Node
from slidebank.slides.stored import index_stored_instances
from slidebank.tiles.service import TileService
from slidebank.web import mount_web

MAX_BODY_BYTES = 64 * 1024
DOCS_STATIC = "/static/vendor/docs"  # Swagger UI and ReDoc, copied from npm at build time (`make web`)


def create_app(node: Node | None = None) -> FastAPI:
    node = node or Node.open()
    gatekeeper = Gatekeeper(node.identities, node.catalog, node.audit, node.governance_watch,
                            OidcVerifier.from_environment())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = watch_governance(gatekeeper.sync)  # per server process, after Granian forked it
        # The search index is built at the first search; build it now, in the background, instead.
        threading.Thread(target=node.catalog.warm_search_index, name="search-index", daemon=True).start()
        try:
            yield
        finally:
            stop.set()

    # No route takes more than a short JSON document; uploads go through `slidebank ingest`.
    app = FastAPI(title="Slidebank", version=__version__, max_body_size=MAX_BODY_BYTES, docs_url=None,
                  redoc_url=None, lifespan=lifespan)
    index_stored_instances(node.catalog, node.open_blob)  # slides stored before DICOMweb: once
    clear_stale_uploads(node.settings.home)  # STOW-RS bodies of requests a crash interrupted
    tiles = TileService(node.catalog, node.open_blob)
    gatekeeper.on_governance_change(tiles.evict_missing)  # erased slides: files closed, keys dropped
    app.state.gatekeeper, app.state.tiles = gatekeeper, tiles
    app.include_router(catalog_routes(node, gatekeeper))
    app.include_router(access_routes(node, gatekeeper))
    app.include_router(annotation_routes(node, gatekeeper))
    app.include_router(processing_routes(node, gatekeeper))
    app.include_router(tile_routes(tiles, gatekeeper))
    app.include_router(frame_routes(tiles, gatekeeper))
    app.include_router(export_routes(gatekeeper))
    dicomweb = DicomWeb(node.catalog, tiles, node.open_blob)
    app.include_router(dicomweb_routes(dicomweb, tiles, gatekeeper))
    app.include_router(stow_routes(node, dicomweb, gatekeeper))
    install_error_handlers(app)
    app.add_middleware(PixelFastPath, tiles=tiles, gatekeeper=gatekeeper, dicomweb=dicomweb)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HeadAsGet)  # a HEAD of a tile takes the fast path too
    app.add_middleware(DicomwebCors)  # outermost: preflights never reach the app

    @app.get("/healthz", response_model=Health, summary="The server answers, and its version")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:  # the interactive API documentation, from the package
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Slidebank API",
                                   swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css", swagger_favicon_url="/favicon.ico")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="Slidebank API", with_google_fonts=False,
                              redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js", redoc_favicon_url="/favicon.ico")

    mount_web(app, gatekeeper.may_view)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]  # FastAPI's documented way to customise it
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, without the 422 FastAPI documents on every route with parameters:
    `api/errors.py` answers a malformed query or body with 400 and a malformed path with 404."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
