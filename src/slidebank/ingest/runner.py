"""Batch ingest: many slides, in worker processes, resumable, reporting as it goes.

Workers do the heavy, crash-safe part (`prepare_slide`); the parent registers results one by one,
so a batch with a bad file still ingests all the good ones, and re-running the same command after
a crash reports finished slides as duplicates and does the rest.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from slidebank.catalog.records import SlideDescription
from slidebank.ingest.pipeline import (
    IngestOutcome,
    IngestRequest,
    prepare_slide,
    register_slide,
)
from slidebank.ingest.sidecar import load_sidecar
from slidebank.node import Node
from slidebank.slides.source import SourceSlide, discover


@dataclass(frozen=True)
class IngestPlan:
    requests: tuple[IngestRequest, ...]
    ignored: tuple[Path, ...]

    @property
    def total_bytes(self) -> int:
        return sum(request.source.size for request in self.requests)


class IngestUsageError(ValueError):
    """The command line or sidecar is wrong; nothing was ingested."""


def plan_ingest(
    inputs: Sequence[Path],
    *,
    dataset: str | None = None,
    sidecar: Path | None = None,
    slide_id: str | None = None,
) -> IngestPlan:
    """Find the slides and attach what the sidecar and command line say about each."""
    sources, ignored = discover(inputs)
    if slide_id and len(sources) != 1:
        raise IngestUsageError(f"--slide-id names one slide, but the inputs hold {len(sources)}")
    table = load_sidecar(sidecar) if sidecar else None
    defaults = SlideDescription(dataset=dataset, slide_id=slide_id)
    requests = []
    for source in sources:
        root = next((Path(p) for p in inputs if Path(p).is_dir() and _is_within(source.path, Path(p))), None)
        described = table.description_for(source.path, root) if table else None
        description = described.merged_over(defaults) if described else defaults
        if slide_id:
            description = SlideDescription(**{**description.__dict__, "slide_id": slide_id})
        requests.append(IngestRequest(source, description))
    return IngestPlan(tuple(requests), tuple(ignored))


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def run_ingest(
    node: Node,
    plan: IngestPlan,
    *,
    workers: int = 1,
    on_outcome: Callable[[IngestOutcome], None] | None = None,
) -> list[IngestOutcome]:
    """Ingest every planned slide; outcomes in completion order, each reported as soon as known."""
    outcomes: list[IngestOutcome] = []
    _ = node.keys  # create the node's key pair here, before worker processes need it

    def finish(request: IngestRequest, prepared: object) -> None:
        outcome = register_slide(node, request, prepared)  # type: ignore[arg-type]
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)

    with node.ingest_lock():
        node.recover()
        if workers <= 1 or len(plan.requests) <= 1:
            threads = max(1, workers)
            for request in plan.requests:
                finish(request, _prepare_or_fail(node, request, threads))
            return outcomes
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures: dict[Future, IngestRequest] = {
                pool.submit(prepare_slide, node.settings, request, 1): request for request in plan.requests
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    request = futures[future]
                    try:
                        prepared = future.result()
                    except Exception as error:  # a worker died (OOM, segfault in a codec)
                        prepared = IngestOutcome(
                            request.source.display_name, "rejected", error=f"ingest worker failed: {error}"
                        )
                    finish(request, prepared)
    return outcomes


def _prepare_or_fail(node: Node, request: IngestRequest, threads: int) -> object:
    try:
        return prepare_slide(node.settings, request, threads)
    except Exception as error:  # keep the batch going; the message says what broke
        return IngestOutcome(request.source.display_name, "rejected", error=f"unexpected error: {error}")


__all__ = ["IngestPlan", "IngestUsageError", "SourceSlide", "plan_ingest", "run_ingest"]
