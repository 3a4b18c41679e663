"""Wire formats of the processing routes: algorithms, jobs with their tasks, heatmaps."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from slidebank.api.schemas import Number, Timestamp, TypedDict, wire

State = Literal["queued", "running", "done", "failed", "cancelled"]


# --- request bodies -----------------------------------------------------------------------------------


class NewJob(BaseModel):
    algorithm: str = Field(max_length=64)
    slides: list[str] = Field(default_factory=list, max_length=100_000)
    dataset: str | None = Field(default=None, max_length=255)
    parameters: dict[str, Any] = Field(default_factory=dict)
    time_limit_s: float | None = Field(default=None, gt=0)
    memory_limit_mb: int | None = Field(default=None, gt=0)


# --- algorithms ---------------------------------------------------------------------------------------


@wire
class AlgorithmParameter(TypedDict):
    name: str
    type: Literal["int", "float", "str", "bool"]
    default: bool | int | float | str | None
    help: str
    minimum: Number | None
    maximum: Number | None


@wire
class Reads(TypedDict):
    what: Annotated[str, Field(description='"overview" and/or "tissue tiles"')]
    mpp: Annotated[Number | None, Field(description="µm per pixel it works at")]
    tile_size: int | None


@wire
class Algorithm(TypedDict):
    name: str
    version: str
    description: str
    parameters: list[AlgorithmParameter]
    reads: Reads
    writes: Annotated[list[str], Field(description='What it stores: "values", "annotations", "heatmap"')]


# --- jobs ---------------------------------------------------------------------------------------------


@wire
class TaskCounts(TypedDict):
    queued: int
    running: int
    done: int
    failed: int
    cancelled: int


@wire
class Progress(TypedDict):
    done: Annotated[int, Field(description="Tasks finished (done, failed or cancelled)")]
    total: int
    tasks: TaskCounts


@wire
class Limits(TypedDict):
    time_s: float | None
    memory_mb: int | None


@wire
class JobSummary(TypedDict):
    """A job as listings show it (at most the first 100 slides)."""

    id: str
    algorithm: str
    version: str
    parameters: dict[str, Any]
    requester: str
    state: State
    cancel_requested: bool
    progress: Progress
    slides: list[str]
    limits: Limits
    runner: Annotated[str | None, Field(description="host:pid of the process driving it")]
    scheduler: str | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    error: str | None
    log: list[str]


@wire
class Task(TypedDict):
    """One slide of a job."""

    slide_id: str
    state: State
    attempts: int
    input_sha256: Annotated[str | None, Field(description="What was read (provenance)")]
    seconds: float | None
    error: str | None
    summary: dict[str, Any]
    started_at: Timestamp | None
    finished_at: Timestamp | None


@wire
class Job(JobSummary):
    """A job with every task."""

    tasks: list[Task]


# --- heatmaps -----------------------------------------------------------------------------------------


@wire
class Heatmap(TypedDict):
    name: str
    columns: int
    rows: int
    legend: dict[str, Any]
    extent: Annotated[list[float] | None, Field(description="Level-0 width and height the PNG covers")]
    job: str | None
    created_at: Timestamp | None
