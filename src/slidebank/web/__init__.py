"""The web app: a catalog page, a slide viewer (with annotations, QC and heatmaps) and a jobs page,
served by the API process.

Plain HTML and JavaScript over the JSON API, Deep Zoom and thumbnails; OpenSeadragon and Annotorious
are copied from npm into `static/vendor/` at build time (`make web`), so nothing is fetched from a CDN.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
PAGES = Path(__file__).parent / "pages"


def mount_web(app: FastAPI, may_view: Callable[[Request, str], bool]) -> None:
    """Serve the pages; `may_view(request, slide_id)` is the API's gatekeeper deciding a viewer page."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:  # browsers ask for it on every page; SVG is fine under this name
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/", response_class=FileResponse, include_in_schema=False)
    def catalog_page() -> FileResponse:
        return FileResponse(PAGES / "catalog.html", media_type="text/html")

    @app.get("/jobs", response_class=FileResponse, include_in_schema=False)
    def jobs_page() -> FileResponse:  # the page asks /api/jobs, which answers only a logged-in caller
        return FileResponse(PAGES / "jobs.html", media_type="text/html")

    @app.get("/view/{slide_id}", response_class=FileResponse, response_model=None, include_in_schema=False)
    def viewer_page(slide_id: str, request: Request) -> FileResponse | HTMLResponse:
        if not may_view(request, slide_id):
            return HTMLResponse((PAGES / "not-found.html").read_text(), status_code=404)
        return FileResponse(PAGES / "viewer.html", media_type="text/html")
