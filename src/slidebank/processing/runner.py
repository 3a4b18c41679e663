"""Drive jobs on Dask distributed: a `LocalCluster` by default, or an existing scheduler.

One Dask task per slide. Lost workers are Dask's business (the scheduler re-runs a task whose
worker died, up to `distributed.scheduler.allowed-failures` times, then the task fails with
KilledWorker); algorithm errors and limit breaches come back as outcomes, never as retries. The
runner heartbeats the job record, so a runner that dies leaves a job another runner resumes.

Configuration (environment): SLIDEBANK_DASK_SCHEDULER (tcp://host:port; workers must see the
node's home and database), SLIDEBANK_DASK_WORKERS, SLIDEBANK_DASK_PROCESSES (0 = threads),
SLIDEBANK_DASK_WORKER_MEMORY (e.g. 4GiB: the nanny restarts a worker above it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slidebank.node import Node
from slidebank.processing.task import TaskOutcome, TaskRequest, run_task

HEARTBEAT_SECONDS = 1.0
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
DEADLINE_GRACE_SECONDS = 5.0  # a task past the deadline gets this long to notice before it is abandoned


@dataclass(frozen=True)
class ClusterSettings:
    scheduler: str | None = None
    workers: int = 2
    processes: bool = True
    worker_memory: str = "auto"

    @classmethod
    def from_environment(cls, scheduler: str | None = None, workers: int | None = None) -> ClusterSettings:
        env = os.environ
        return cls(
            scheduler=scheduler or env.get("SLIDEBANK_DASK_SCHEDULER") or None,
            workers=workers or int(env.get("SLIDEBANK_DASK_WORKERS", str(min(4, os.cpu_count() or 1)))),
            processes=env.get("SLIDEBANK_DASK_PROCESSES", "1").lower() not in ("0", "false", "no"),
            worker_memory=env.get("SLIDEBANK_DASK_WORKER_MEMORY", "auto"),
        )


class RunnerStopping(Exception):
    """The runner is shutting down mid-job: the job stays `running` and the next runner resumes it."""


class JobRunner:
    """Runs jobs of one node; the Dask client is created on first use and closed by `close`.

    `stop`, when set, ends `serve_forever` and interrupts a job being driven (without finishing it).
    """

    def __init__(self, node: Node, cluster: ClusterSettings | None = None,
                 stop: threading.Event | None = None) -> None:
        self._node = node
        self._settings = cluster or ClusterSettings.from_environment()
        self._stop = stop or threading.Event()
        self._client: Any = None
        self._cluster: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import dask
            from dask.distributed import Client, LocalCluster

            if self._settings.scheduler:
                self._client = Client(self._settings.scheduler, timeout="20s")
            else:
                # Dask's nannies set MALLOC_TRIM_THRESHOLD_ in workers, which turns off glibc's adaptive
                # mmap threshold: every large array becomes a fresh mmap and page faults, and QC of a
                # 1-Gpx slide took twice as long as in one process. Pixel work allocates big arrays.
                environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
                           if k != "MALLOC_TRIM_THRESHOLD_"}
                dask.config.set({"distributed.nanny.pre-spawn-environ": environ})
                self._cluster = LocalCluster(
                    n_workers=self._settings.workers, threads_per_worker=1, processes=self._settings.processes,
                    memory_limit=self._settings.worker_memory, dashboard_address="127.0.0.1:0",
                    silence_logs=logging.ERROR,
                )
                self._client = Client(self._cluster)
        return self._client

    @property
    def scheduler_address(self) -> str:
        return self.client.scheduler.address

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None

    def __enter__(self) -> JobRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running ------------------------------------------------------------------------------------

    def run(self, job_uuid: str, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Drive a job to its end (or follow it, when another runner holds it); returns the job."""
        jobs = self._node.jobs
        if not jobs.claim(job_uuid, self.scheduler_address):
            return self.follow(job_uuid, on_progress)
        job = jobs.get(job_uuid, tasks=False)
        deadline = None
        if job["limits"]["time_s"]:
            deadline = datetime.fromisoformat(job["started_at"]).timestamp() + job["limits"]["time_s"]
        requests = [
            TaskRequest(
                settings=self._node.settings, job_uuid=job_uuid, job_id=jobs.job_id(job_uuid),
                algorithm=job["algorithm"], version=job["version"], parameters=job["parameters"],
                slide_id=task["slide_id"], requester=job["requester"], deadline=deadline,
                memory_limit_mb=job["limits"]["memory_mb"],
            )
            for task in jobs.pending_tasks(job_uuid)
        ]
        state, error = self._drive(job_uuid, requests, deadline, on_progress)
        if state == "done":  # tasks that failed under an earlier runner still fail the job
            failed = [t for t in jobs.get(job_uuid)["tasks"] if t["state"] != "done"]
            if failed:
                state = "failed"
                error = f"{len(failed)} slide(s) failed: " + "; ".join(f"{t['slide_id']}: {t['error']}" for t in failed[:3])
        final = jobs.finish(job_uuid, state, error)
        if on_progress:
            on_progress(final)
        return final

    def _drive(
        self, job_uuid: str, requests: list[TaskRequest], deadline: float | None,
        on_progress: Callable[[dict[str, Any]], None] | None,
    ) -> tuple[str, str | None]:
        from dask.distributed import wait

        jobs = self._node.jobs
        futures = {self.client.submit(run_task, r, pure=False, key=f"{job_uuid}/{r.slide_id}"): r for r in requests}
        pending = set(futures)
        failures: list[str] = []
        while pending:
            if self._stop.is_set():
                self.client.cancel(list(pending))
                raise RunnerStopping(job_uuid)
            try:
                done, pending = wait(pending, timeout=HEARTBEAT_SECONDS, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished within a heartbeat
                done = set()
            for future in done:
                outcome = self._outcome(future, futures[future])
                if outcome.state == "failed":
                    failures.append(f"{outcome.slide_id}: {outcome.error}")
                if outcome.state == "cancelled":
                    pending.clear()
            if jobs.heartbeat(job_uuid):
                self.client.cancel(list(pending))
                return "cancelled", "cancelled on request"
            if deadline is not None and time.time() > deadline + DEADLINE_GRACE_SECONDS and pending:
                self.client.cancel(list(pending))
                return "failed", "the job went over its time limit"
            if on_progress:
                on_progress(jobs.get(job_uuid, tasks=False))
        if jobs.cancel_requested(job_uuid):
            return "cancelled", "cancelled on request"
        if failures:
            return "failed", f"{len(failures)} of {len(requests)} slide(s) failed: " + "; ".join(failures[:3])
        return "done", None

    def _outcome(self, future: Any, request: TaskRequest) -> TaskOutcome:
        try:
            return future.result()
        except Exception as error:  # noqa: BLE001 - KilledWorker (worker lost too often), or the task was cancelled
            reason = f"worker lost: {error}" if type(error).__name__ == "KilledWorker" else f"{type(error).__name__}: {error}"
            self._node.jobs.task_finished(request.job_uuid, request.slide_id, "failed", error=reason)
            return TaskOutcome(request.slide_id, "failed", reason)

    def follow(self, job_uuid: str, on_progress: Callable[[dict[str, Any]], None] | None = None,
               poll_seconds: float = 0.5) -> dict[str, Any]:
        """Wait for a job another runner drives, reporting progress as it goes."""
        while True:
            job = self._node.jobs.get(job_uuid, tasks=False)
            if on_progress:
                on_progress(job)
            if job["state"] in FINAL_STATES:
                return job
            if job["state"] == "running" and self._node.jobs.claimable().count(job_uuid):
                return self.run(job_uuid, on_progress)  # its runner died: take it over
            time.sleep(poll_seconds)

    def serve_forever(self, poll_seconds: float = 2.0) -> None:
        """Run queued (and orphaned) jobs until `stop` is set: the API server's job loop."""
        log = logging.getLogger("slidebank.jobs")
        while not self._stop.is_set():
            for job_uuid in self._node.jobs.claimable():
                if self._stop.is_set():
                    break
                try:
                    self.run(job_uuid)
                except RunnerStopping:
                    return
                except Exception:  # keep serving other jobs; the job's own record says what happened
                    log.exception("job %s", job_uuid)
            self._stop.wait(poll_seconds)
