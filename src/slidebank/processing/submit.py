"""Creating a job: the algorithm and its parameters checked, every slide checked against the
requester's grants, limits capped by the operator's, the request audited with the job."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from slidebank.access.errors import NotAllowed
from slidebank.access.principal import Principal
from slidebank.algorithms.base import parse_parameters
from slidebank.algorithms.registry import get_algorithm
from slidebank.catalog import Catalog
from slidebank.jobs import JobError, JobNotFound, Jobs, JobSpec


def operator_limits() -> tuple[float, int]:
    """The most time (s) and memory (MiB per task) any job may have on this node."""
    return (float(os.environ.get("SLIDEBANK_JOB_TIME_LIMIT", "3600")),
            int(os.environ.get("SLIDEBANK_JOB_MEMORY_LIMIT_MB", "4096")))


def submit_job(
    catalog: Catalog, jobs: Jobs, principal: Principal, algorithm_name: str, *, slide_ids: Sequence[str] = (),
    dataset: str | None = None, parameters: Mapping[str, Any] | None = None,
    time_limit_s: float | None = None, memory_limit_mb: int | None = None,
) -> dict[str, Any]:
    algorithm = get_algorithm(algorithm_name)
    parsed = parse_parameters(algorithm, parameters or {})
    targets = list(dict.fromkeys(slide_ids))
    if dataset is not None:
        if not principal.can_read(dataset):
            raise NotAllowed(f"{principal.name} may not read dataset {dataset!r}")
        targets += [s["slide_id"] for s in catalog.list_slides() if s["dataset"] == dataset]
    if not targets:
        raise JobError("name at least one slide, or a dataset with slides")
    for slide_id in targets:
        if not principal.can_read(catalog.slide_dataset(slide_id)):
            raise JobNotFound(f"no slide {slide_id!r}")  # as for a slide that does not exist
    max_time, max_memory = operator_limits()
    spec = JobSpec(
        algorithm=algorithm.name, version=algorithm.version, parameters=parsed, slide_ids=tuple(targets),
        requester=principal.name, time_limit_s=min(time_limit_s or max_time, max_time),
        memory_limit_mb=min(memory_limit_mb or max_memory, max_memory),
    )
    return jobs.create(spec, dataset)
