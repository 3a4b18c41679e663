"""What runs on a Dask worker: one algorithm on one slide, results stored with their provenance.

The worker opens the node itself (same database and store; the same home unless the node runs on
PostgreSQL and S3, see `NodeSettings.for_worker`), reads pixels only through the decrypting store,
and records its own task state, so the job record stays true even if the process driving the job
dies. A task's results (features, facts, heatmaps), its end, its audit entry and any
notice to the stewards commit in one transaction: a crash leaves the previous results whole.
Errors never escape as exceptions: an exception would make Dask retry, and retries are for lost
workers, not for an algorithm that fails or a limit hit.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil

from slidebank.algorithms.base import SlideResult
from slidebank.algorithms.models import ModelRegistry
from slidebank.algorithms.reader import SlideReader
from slidebank.algorithms.registry import get_algorithm
from slidebank.annotations.geojson import AnnotationError, parse_feature
from slidebank.annotations.heatmap import render_png
from slidebank.catalog import facts as catalog_facts
from slidebank.node import Node, NodeSettings
from slidebank.slides.stored import open_stored_slide
from slidebank.storage.crypt import seal

CANCEL_POLL_SECONDS = 1.0
_nodes: dict[NodeSettings, Node] = {}
_nodes_lock = threading.Lock()


class JobStopped(Exception):
    """The job was cancelled or went over a limit; `state` is what the task becomes."""

    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state = state


@dataclass(frozen=True)
class TaskRequest:
    settings: NodeSettings
    job_uuid: str
    job_id: int
    algorithm: str
    version: str
    parameters: dict[str, Any]
    slide_id: str
    requester: str
    deadline: float | None  # time.time() after which the job is over its time limit
    memory_limit_mb: int | None


@dataclass
class TaskOutcome:
    slide_id: str
    state: str  # done, failed, cancelled
    error: str | None = None
    seconds: float = 0.0


class LimitedContext:
    """The `TaskContext` an algorithm gets: cancellation, time and memory checks, and a log.

    Memory is the worker process's resident growth since the task started: exact with one task per
    worker process (the LocalCluster's layout), an upper bound where workers run several threads.
    """

    def __init__(self, node: Node, request: TaskRequest) -> None:
        self._node, self._request = node, request
        self._process = psutil.Process()
        self._baseline = self._process.memory_info().rss
        self._next_poll = 0.0
        self.lines: list[str] = []

    def check(self) -> None:
        request = self._request
        if request.deadline is not None and time.time() > request.deadline:
            raise JobStopped("failed", "the job went over its time limit")
        if request.memory_limit_mb is not None:
            used = (self._process.memory_info().rss - self._baseline) / 2**20
            if used > request.memory_limit_mb:
                raise JobStopped("failed", f"the task used {used:.0f} MiB, over the job's limit of "
                                           f"{request.memory_limit_mb} MiB")
        if time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + CANCEL_POLL_SECONDS
            if self._node.jobs.cancel_requested(request.job_uuid):
                raise JobStopped("cancelled", "cancelled")

    def log(self, message: str) -> None:
        self.lines.append(message)

    def model(self, name: str) -> bytes:
        return ModelRegistry(self._node.settings.home / "models").read(name)


def worker_node(settings: NodeSettings) -> Node:
    """One opened node per worker process and home (opening costs an engine and key loading)."""
    with _nodes_lock:
        if settings not in _nodes:
            _nodes[settings] = Node(settings.for_worker(), migrate=False)
        return _nodes[settings]


def run_task(request: TaskRequest) -> TaskOutcome:
    node = worker_node(request.settings)
    jobs = node.jobs
    started = time.monotonic()
    jobs.task_started(request.job_uuid, request.slide_id)
    try:
        outcome = _run(node, request, started)
    except JobStopped as stop:
        outcome = TaskOutcome(request.slide_id, stop.state, str(stop))
    except Exception as error:  # noqa: BLE001 - a failing algorithm fails its task, with the reason
        outcome = TaskOutcome(request.slide_id, "failed", f"{type(error).__name__}: {error}")
    outcome.seconds = time.monotonic() - started
    if outcome.state != "done":
        jobs.task_finished(request.job_uuid, request.slide_id, outcome.state, seconds=outcome.seconds,
                           error=outcome.error)
    return outcome


def _run(node: Node, request: TaskRequest, started: float) -> TaskOutcome:
    dataset = node.catalog.slide_dataset(request.slide_id)
    principal = node.identities.principal_for_requester(request.requester)
    if principal is None or not principal.can_read(dataset):  # grants are checked again at run time
        raise JobStopped("failed", f"{request.requester} may not read the dataset of {request.slide_id}")
    assert dataset is not None
    algorithm = get_algorithm(request.algorithm)
    if algorithm.version != request.version:
        raise JobStopped("failed", f"{request.algorithm} is now version {algorithm.version}, "
                                   f"the job asked for {request.version}")
    inputs = sorted(f.sha256 for f in node.volume_files(request.slide_id))
    context = LimitedContext(node, request)
    context.check()
    with open_stored_slide(node.catalog, node.open_blob, request.slide_id) as slide:
        reader = SlideReader(slide, request.slide_id)
        result = algorithm.run(reader, request.parameters, context)
    context.check()
    summary = {
        "values": result.values, "features": len(result.features), "heatmaps": sorted(result.heatmaps),
        "flags": result.flags, "log": [*result.log, *context.lines][:50],
        "tiles_read": reader.tiles_read, "pixels_read": reader.pixels_read, "inputs": inputs,
        "worker": f"{os.uname().nodename}:{os.getpid()}",
    }
    store_results(node, request, result, dataset, principal.grants.get(dataset), summary,
                  time.monotonic() - started, hashlib.sha256("\n".join(inputs).encode()).hexdigest())
    return TaskOutcome(request.slide_id, "done")


def store_results(
    node: Node, request: TaskRequest, result: SlideResult, dataset: str, grant: str | None,
    summary: dict[str, Any], seconds: float, input_sha256: str,
) -> None:
    """Replace what earlier runs of the algorithm wrote on the slide, in one transaction with the
    task's end, its audit entry and the stewards' notice."""
    author = f"{request.algorithm}@{request.version}"
    try:
        features = [parse_feature(f) for f in result.features]
    except AnnotationError as error:
        raise JobStopped("failed", f"{author} produced an invalid feature: {error}") from None
    heatmaps = []
    for name, raster in result.heatmaps.items():
        png = render_png(raster.values, raster.colormap, mask_like=raster.colormap == "green")
        legend = {**raster.legend, "colormap": raster.colormap, "extent": [float(v) for v in raster.extent]}
        heatmaps.append((name, seal(png, node.keys), raster.values.shape, legend))
    with node.uow.write() as session:
        node.annotations.replace_algorithm_results(session, request.slide_id, request.algorithm, author, features,
                                                   request.job_id)
        if result.values:
            catalog_facts.set_facts(session, request.slide_id, result.values, job_id=request.job_id)
        for name, sealed, shape, legend in heatmaps:
            node.annotations.set_heatmap(session, request.slide_id, name, sealed, shape, legend, request.job_id)
        node.jobs.finish_task(session, request.job_uuid, request.slide_id, "done", seconds=seconds, summary=summary,
                              input_sha256=input_sha256)
        node.audit.append(session, request.requester, "slide.process", dataset=dataset, slide_id=request.slide_id,
                          grant=grant, detail={"job": request.job_uuid, "algorithm": request.algorithm,
                                               "version": request.version, "tiles_read": summary["tiles_read"]})
        if result.flags:  # the data steward hears about a failing slide
            node.notifications.notify_stewards(session, dataset, f"{request.algorithm} flagged slide "
                                               f"{request.slide_id}: " + "; ".join(result.flags))
