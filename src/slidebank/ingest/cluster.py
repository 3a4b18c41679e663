"""Batch ingest spread over a Dask cluster's workers, for sites whose slides outnumber one host.

The parent (`run_ingest`) still registers every slide itself, under the site's ingest lock; what
moves to the cluster is the heavy part, `prepare_slide` (read, de-identify, convert, encrypt,
store). Each Dask task runs its slide in a supervised process of its own on the worker (the same
time limit and memory cap as a local batch), so a decoder that hangs or balloons costs one slide,
not the worker. Workers need: the source files at the same paths (a shared mount of the incoming
folder), the database and store (PostgreSQL and S3: then nothing of the node's folder), the key
files (`SLIDEBANK_KEYS_DIR`), and non-daemonic worker processes so that a task may start its
supervised process (`DASK_DISTRIBUTED__WORKER__DAEMON=False`, or `dask worker --no-nanny`).
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from typing import Any

from slidebank.ingest.pipeline import IngestRequest
from slidebank.ingest.watchdog import Failed, Finished, Limits, SupervisedPool
from slidebank.ingest.worker import open_worker_node, prepare_in_worker
from slidebank.node import NodeSettings

DAEMONIC = ("this Dask worker's processes are daemonic and cannot start the supervised process a slide is "
            "converted in: start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False (or --no-nanny)")


def prepare_on_cluster(scheduler: str, settings: NodeSettings, requests: dict[int, IngestRequest],
                       limits: dict[int, Limits], threads: int) -> Iterator[tuple[int, Finished | Failed]]:
    """Prepare each request on the cluster at `scheduler`; yield (index, outcome) as each completes."""
    from dask.distributed import Client, as_completed

    batch = uuid.uuid4().hex[:8]
    with Client(scheduler, timeout="20s") as client:
        futures = {client.submit(prepare_bounded, settings, request, threads, limits[index], pure=False,
                                 key=f"ingest-{batch}-{index}"): index for index, request in requests.items()}
        for future in as_completed(futures):
            index = futures[future]
            try:
                outcome: Finished | Failed = future.result()
            except Exception as error:  # noqa: BLE001 - a lost worker or a task Dask gave up on: that slide only
                outcome = Failed(f"the cluster could not prepare it: {type(error).__name__}: {error}")
            yield index, outcome


def prepare_bounded(settings: NodeSettings, request: IngestRequest, threads: int, limits: Limits) -> Finished | Failed:
    """On a Dask worker: one slide in a supervised process of its own, under its limits."""
    if multiprocessing.current_process().daemon:
        return Failed(DAEMONIC)
    with SupervisedPool[int](1, open_worker_node, (settings,)) as pool:
        pool.submit(0, prepare_in_worker, (request, threads), limits)
        results: list[Any] = [outcome for _, outcome in pool.results()]
    return results[0]
