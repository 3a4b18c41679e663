"""`Client`: a node's catalog, slides, annotations and jobs from Python, under your grants.

    from slidebank.client import Client

    with Client("https://slidebank.example.org", token="sbk_…") as bank:
        found = bank.search(organ=["Breast"], where="qc.blur_fraction < 0.05")
        for summary in bank.slides(dataset="camelyon"):
            with bank.open(summary["slide_id"]) as slide:   # OpenSlide's API
                patch = slide.read_region((10_000, 20_000), 0, (256, 256))

Every call goes through the node's gatekeeper and audit exactly as the browser and the command
line do: you see what your grants let you see, and your reads are recorded. `Client.local(home,
user=...)` gives the same interface on a node folder on this machine (same gatekeeper, no server).
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from slidebank.client.cache import FrameCache
from slidebank.client.errors import SlidebankError
from slidebank.client.slide import Progress, RemoteSlide
from slidebank.client.spec import ClientSpec
from slidebank.client.transport import Transport

SEARCH_PAGE = 1000  # the node's largest page
PROGRESS_FRAMES = 256  # regions of more frames than this show a progress bar (when asked or on a terminal)
FINISHED = frozenset({"done", "failed", "cancelled"})


class Client:
    """A connection to one Slidebank node as one user (an API token; none: anonymous, open data only).

    `cache_mb`: stored frames kept in memory, encoded and decoded, for every slide opened
    (neighbouring patches share frames); `workers`: batches of frames fetched at once for large regions; `retries`: attempts
    after a transient failure, with exponential back-off; `progress`: a progress bar for long
    reads (None: when standard error is a terminal).
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0, retries: int = 4,
                 cache_mb: int = 256, workers: int = 4, progress: bool | None = None,
                 http: httpx.Client | None = None) -> None:
        self._transport = Transport(url, token, timeout=timeout, retries=retries, connections=max(4, workers * 2),
                                    http=http)
        self.url, self._token = url, token
        self._home: str | None = None
        self._options = {"timeout": timeout, "retries": retries, "cache_mb": cache_mb, "workers": workers,
                         "progress": False}
        self.cache = FrameCache(cache_mb * 2**20)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slidebank-frames")
        self._show_progress = sys.stderr.isatty() if progress is None else progress
        self._on_close: list[Any] = []

    @classmethod
    def local(cls, home: str | Path | None = None, *, token: str | None = None, user: str | None = None,
              **options: Any) -> Client:
        """The same interface on a node folder of this machine, through the same gatekeeper and audit.

        Give a `token`, or a `user` for whom a one-day token is made now (recorded in the audit as
        any token) and revoked when the client closes; neither: anonymous.
        """
        from slidebank.client.local import LOCAL_URL, open_local

        http, token, folder, closing = open_local(Path(home) if home else None, token, user)
        client = cls(LOCAL_URL, token, http=http, **options)
        client._on_close.append(closing)
        client._home = str(folder.resolve())
        return client

    def spec(self) -> ClientSpec:
        """How to connect the same way from another process (e.g. a DataLoader worker)."""
        if self._home is not None:
            return ClientSpec(token=self._token, home=self._home, options=self._options)
        return ClientSpec(url=self.url, token=self._token, options=self._options)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._transport.close()
        for closing in self._on_close:
            closing()
        self._on_close.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- who and what ----------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        """Who the node takes you for: name, role, the datasets you may read."""
        return self._transport.get_json("/api/me")

    def datasets(self) -> list[dict[str, Any]]:
        """Every dataset's public description (terms, size)."""
        return self._transport.get_json("/api/datasets")

    def search(self, *, dataset: list[str] | None = None, species: list[str] | None = None,
               organ: list[str] | None = None, stain: list[str] | None = None, vendor: list[str] | None = None,
               diagnosis: list[str] | None = None, text: str | None = None, where: str | None = None,
               limit: int = 50, offset: int = 0, after: str | None = None,
               facet_limit: int | None = None) -> dict[str, Any]:
        """One page of a faceted search, as `/api/search`: {"total", "items", "facets", "facet_values", "next"}.
        `where` takes conditions on measured facts, e.g. "qc.blur_fraction < 0.05"; pass a page's
        `next` as `after` for the following page."""
        params = {"dataset": dataset, "species": species, "organ": organ, "stain": stain, "vendor": vendor,
                  "diagnosis": diagnosis, "text": text, "where": where, "limit": limit, "offset": offset,
                  "after": after, "facet_limit": facet_limit}
        return self._transport.get_json(
            "/api/search", {k: v for k, v in params.items() if v is not None})

    def slides(self, dataset: str | None = None, **search: Any) -> Iterator[dict[str, Any]]:
        """Every slide you may read (of `dataset`, matching the `search` arguments), page by page."""
        after = None
        while True:  # keyset pages: a slide added or erased meanwhile neither repeats nor skips another
            page = self.search(dataset=[dataset] if dataset else None, limit=SEARCH_PAGE, after=after,
                               facet_limit=1, **search)
            yield from page["items"]
            after = page.get("next")
            if not page["items"] or after is None:
                return

    def slide(self, slide_id: str) -> dict[str, Any]:
        """A slide's description: image, MetaFleX chain, codes, files, facts."""
        return self._transport.get_json(f"/api/slides/{slide_id}")

    def qc(self, slide_id: str) -> dict[str, Any]:
        """The slide's quality-control facts (tissue fraction, blur, pen, folds, stain)."""
        return self.slide(slide_id).get("qc", {})

    def open(self, slide_id: str) -> RemoteSlide:
        """The slide's pixels with OpenSlide's API (see `RemoteSlide`)."""
        description = self._transport.get_json(f"/api/slides/{slide_id}/pyramid")
        return RemoteSlide(self._transport, description, self.cache, self._executor, self._progress_bar)

    def annotations(self, slide_id: str, bbox: tuple[float, float, float, float] | None = None,
                    classes: list[str] | None = None, limit: int = 5000) -> dict[str, Any]:
        """Features (GeoJSON FeatureCollection, level-0 pixels) in `bbox` (x0, y0, x1, y1), of `classes`;
        "truncated" says whether `limit` cut it short."""
        params: dict[str, Any] = {"limit": limit}
        if bbox is not None:
            params["bbox"] = ",".join(repr(float(v)) for v in bbox)
        if classes is not None:
            params["class"] = classes
        return self._transport.get_json(
            f"/api/slides/{slide_id}/annotations", params)

    def heatmaps(self, slide_id: str) -> list[dict[str, Any]]:
        """The slide's heatmaps (QC masks, scores): name, grid, legend, the level-0 extent they cover."""
        return self._transport.get_json(f"/api/slides/{slide_id}/heatmaps")

    def heatmap(self, slide_id: str, name: str) -> Image.Image:
        """A heatmap as an RGBA image covering its `extent` from the slide's corner (transparent: no value)."""
        answer = self._transport.request("GET", f"/api/slides/{slide_id}/heatmaps/{name}.png")
        with Image.open(io.BytesIO(answer.content)) as image:
            return image.convert("RGBA")

    def start_export(self, slides: list[str], parameters: dict[str, Any], use: str = "export") -> dict[str, Any]:
        """Declare a patch export (`use="export"`) or training read (`"training"`) of these slides to
        the node: checked against your grants, audited; returns its id and the grant that covers
        each dataset (for the provenance of the export or the model)."""
        return self._transport.post_json("/api/patch-exports", {"slides": slides, "parameters": parameters, "use": use})

    # -- jobs ------------------------------------------------------------------------------

    def algorithms(self) -> list[dict[str, Any]]:
        return self._transport.get_json("/api/algorithms")

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        """Your jobs, newest first."""
        return self._transport.get_json("/api/jobs", {"limit": limit})

    def job(self, job_id: str) -> dict[str, Any]:
        return self._transport.get_json(f"/api/jobs/{job_id}")

    def run(self, algorithm: str, *, slides: list[str] | None = None, dataset: str | None = None,
            parameters: dict[str, Any] | None = None, wait: bool = False, timeout_s: float = 3600.0) -> dict[str, Any]:
        """Run an algorithm next to the data (the node's job runner); with `wait`, until it ends."""
        job = self._transport.post_json("/api/jobs", {"algorithm": algorithm, "slides": slides or [],
                                                      "dataset": dataset, "parameters": parameters or {}})
        if not wait:
            return job
        deadline = time.monotonic() + timeout_s
        delay = 0.2
        while (job := self.job(job["id"]))["state"] not in FINISHED:
            if time.monotonic() > deadline:
                raise SlidebankError(f"job {job['id']} still {job['state']} after {timeout_s:g} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        return job

    # -- progress --------------------------------------------------------------------------

    def _progress_bar(self, frames: int) -> Progress | None:
        if not self._show_progress or frames < PROGRESS_FRAMES:
            return None
        from rich.progress import Progress as Bar

        bar = Bar(transient=True)
        task = bar.add_task("frames", total=frames)
        bar.start()

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done)
            if done >= total:
                bar.stop()

        return report
