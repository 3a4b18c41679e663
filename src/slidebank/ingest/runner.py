"""Batch ingest: many slides, in supervised worker processes, resumable, reporting as it goes.

Workers do the heavy, crash-safe part (`prepare_slide`) under a time limit and a memory cap; the
parent registers results one by one, so a batch with a bad file — corrupt, hostile, or one that
makes a decoder hang — still ingests all the good ones, and re-running the same command after a
crash reports finished slides as duplicates and does the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from slidebank.access.principal import Principal, operator
from slidebank.catalog.records import SlideDescription
from slidebank.ingest.pipeline import IngestOutcome, IngestRequest, Registrar, register_slide
from slidebank.ingest.sidecar import load_sidecar
from slidebank.ingest.watchdog import Failed, Finished, Limits, SupervisedPool
from slidebank.ingest.worker import open_worker_node, prepare_in_worker
from slidebank.node import Node, NodeSettings
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


def time_limit(source: SourceSlide) -> float:
    """How long one slide may take before it counts as hung: generous, and growing with its size."""
    base = float(os.environ.get("SLIDEBANK_INGEST_TIME_LIMIT_S", "120"))
    per_gib = float(os.environ.get("SLIDEBANK_INGEST_SECONDS_PER_GB", "600"))
    return base + per_gib * source.size / 2**30


def memory_limit() -> int:
    """The most resident memory one slide's conversion may use, in bytes."""
    return int(float(os.environ.get("SLIDEBANK_INGEST_MEMORY_MB", "4096")) * 2**20)


def run_ingest(
    node: Node,
    plan: IngestPlan,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    actor: Principal | None = None,
    on_outcome: Callable[[IngestOutcome], None] | None = None,
) -> list[IngestOutcome]:
    """Ingest every planned slide; outcomes in completion order, each reported as soon as known.

    Each slide is prepared in a supervised worker process (see `watchdog`): one that hangs, or goes
    over its memory cap, is stopped and reported `rejected` with the reason while the batch goes on;
    what it staged is removed by the next recovery, and nothing of it is registered. The processes
    are `workers` local ones, or, with a Dask `scheduler` address, processes on the cluster's workers
    (see `cluster`); registration stays here either way.
    """
    outcomes: list[IngestOutcome] = []
    _ = node.keys  # create the node's key pair here, before worker processes need it
    registrar = Registrar(node.catalog, node.store, node.audit,
                          node.pseudonyms if node.settings.keep_pseudonym_map else None, actor or operator())
    requests = {index: request for index, request in enumerate(plan.requests)}
    threads = max(1, workers) if len(requests) <= 1 else 1

    with node.ingest_lock():
        node.recover()
        for index, result in _prepared(node.settings, requests, workers, scheduler, threads):
            request = requests[index]
            if isinstance(result, Finished):
                prepared = result.value
            else:
                prepared = IngestOutcome(request.source.display_name, "rejected", error=result.reason,
                                         size=request.source.size)
            outcome = register_slide(registrar, request, prepared)
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
        node.recover()  # what a stopped worker left in staging or published goes now
    return outcomes


def _prepared(settings: NodeSettings, requests: dict[int, IngestRequest], workers: int, scheduler: str | None,
              threads: int) -> Iterator[tuple[int, Finished | Failed]]:
    """(index, outcome) of each request's preparation, in completion order, wherever it runs."""
    limits = {index: Limits(time_limit(request.source), memory_limit()) for index, request in requests.items()}
    if scheduler:
        from slidebank.ingest.cluster import prepare_on_cluster

        yield from prepare_on_cluster(scheduler, settings, requests, limits, threads)
        return
    with SupervisedPool[int](min(workers, max(1, len(requests))), open_worker_node, (settings,)) as pool:
        for index, request in requests.items():
            pool.submit(index, prepare_in_worker, (request, threads), limits[index])
        yield from pool.results()


__all__ = ["IngestPlan", "IngestUsageError", "SourceSlide", "plan_ingest", "run_ingest"]
