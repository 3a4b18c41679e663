"""Batch ingest: many slides, in supervised worker processes, resumable, reporting as it goes.

Workers do the heavy, crash-safe part (`prepare_slide`) under a time limit and a memory cap; the
parent registers results one by one, so a batch with a bad file — corrupt, hostile, or one that
makes a decoder hang — still ingests all the good ones, and re-running the same command after a
crash reports finished slides as duplicates and does the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from slidebank.access.principal import Principal, operator
from slidebank.catalog.records import IngestedSlide, SlideDescription
from slidebank.ingest.pipeline import (
    IngestContext,
    IngestOutcome,
    IngestRequest,
    Registrar,
    prepare_slide,
    register_slide,
)
from slidebank.ingest.sidecar import load_sidecar
from slidebank.ingest.watchdog import Finished, Limits, SupervisedPool
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


_worker_node: Node | None = None


def _open_worker_node(settings: NodeSettings) -> None:
    """In each worker process, once: the node it prepares slides for (no migration: the parent did)."""
    global _worker_node
    _worker_node = Node(settings.for_worker(), migrate=False)


def _prepare_in_worker(request: IngestRequest, threads: int) -> IngestedSlide | IngestOutcome:
    node = _worker_node
    assert node is not None, "worker process without its node"
    context = IngestContext(node.catalog, node.store, node.keys, node.secret, node.limits)
    return prepare_slide(context, request, threads)


def run_ingest(
    node: Node,
    plan: IngestPlan,
    *,
    workers: int = 1,
    actor: Principal | None = None,
    on_outcome: Callable[[IngestOutcome], None] | None = None,
) -> list[IngestOutcome]:
    """Ingest every planned slide; outcomes in completion order, each reported as soon as known.

    Each slide is prepared in a supervised worker process (see `watchdog`): one that hangs, or goes
    over its memory cap, is stopped and reported `rejected` with the reason while the batch goes on;
    what it staged is removed by the next recovery, and nothing of it is registered.
    """
    outcomes: list[IngestOutcome] = []
    _ = node.keys  # create the node's key pair here, before worker processes need it
    registrar = Registrar(node.catalog, node.store, node.audit,
                          node.pseudonyms if node.settings.keep_pseudonym_map else None, actor or operator())
    requests = {index: request for index, request in enumerate(plan.requests)}
    threads = max(1, workers) if len(requests) <= 1 else 1

    with node.ingest_lock():
        node.recover()
        with SupervisedPool[int](min(workers, max(1, len(requests))), _open_worker_node, (node.settings,)) as pool:
            for index, request in requests.items():
                pool.submit(index, _prepare_in_worker, (request, threads),
                            Limits(time_limit(request.source), memory_limit()))
            for index, result in pool.results():
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


__all__ = ["IngestPlan", "IngestUsageError", "SourceSlide", "plan_ingest", "run_ingest"]
