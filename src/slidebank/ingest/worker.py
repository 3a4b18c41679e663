"""What a process that prepares slides runs: the node opened once per process, then one slide per call.

Shared by the local supervised pool (`runner`) and by Dask workers on other hosts (`cluster`); both
open the node with `NodeSettings.for_worker`, so a worker host needs the database and store, not the
node's folder.
"""

from __future__ import annotations

from slidebank.catalog.records import IngestedSlide
from slidebank.ingest.pipeline import IngestContext, IngestOutcome, IngestRequest, prepare_slide
from slidebank.node import Node, NodeSettings

_worker_node: list[Node] = []


def open_worker_node(settings: NodeSettings) -> None:
    """In each worker process, once: the node it prepares slides for (no migration: the parent did)."""
    _worker_node[:] = [Node(settings.for_worker(), migrate=False)]


def prepare_in_worker(request: IngestRequest, threads: int) -> IngestedSlide | IngestOutcome:
    if not _worker_node:
        raise RuntimeError("worker process without its node")
    node = _worker_node[0]
    context = IngestContext(node.catalog, node.store, node.keys, node.secret, node.limits)
    return prepare_slide(context, request, threads)
