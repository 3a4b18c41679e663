"""Job records: create (grant-checked by the caller), claim, progress, cancel, finish.

A runner *claims* a job with one conditional UPDATE, so two runners (the API server's and a
`slidebank run --wait`) never drive the same job; a running job whose runner stopped sending
heartbeats is claimable again, and only its unfinished tasks run again.
"""

from __future__ import annotations

import builtins
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from slidebank.audit import AuditLog
from slidebank.db import UnitOfWork
from slidebank.db.models import Image, Job, JobTask, utcnow
from slidebank.db.models.base import iso_utc

STALE_AFTER = timedelta(seconds=float(os.environ.get("SLIDEBANK_JOB_STALE_SECONDS", "30")))
MAX_LOG_LINES = 500
MAX_LISTED_SLIDES = 100  # in job summaries; `get` has every task


class JobError(Exception):
    pass


class JobNotFound(JobError, LookupError):
    pass


@dataclass(frozen=True)
class JobSpec:
    algorithm: str
    version: str
    parameters: dict[str, Any]
    slide_ids: tuple[str, ...]
    requester: str
    time_limit_s: float | None = None
    memory_limit_mb: int | None = None


def runner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Jobs:
    def __init__(self, uow: UnitOfWork, audit: AuditLog) -> None:
        self._uow = uow
        self._audit = audit

    def create(self, spec: JobSpec, dataset: str | None = None) -> dict[str, Any]:
        """A queued job with one task per slide (unknown slides are an error; nothing is created),
        audited as the requester's."""
        if not spec.slide_ids:
            raise JobError("a job needs at least one slide")
        with self._uow.write() as session:
            images = dict(session.execute(select(Image.slide_id, Image.id).where(Image.slide_id.in_(spec.slide_ids))).all())
            missing = [s for s in spec.slide_ids if s not in images]
            if missing:
                raise JobNotFound(f"no slide {', '.join(missing[:5])}")
            job = Job(
                algorithm=spec.algorithm, algorithm_version=spec.version, parameters=spec.parameters,
                requester=spec.requester, time_limit_s=spec.time_limit_s, memory_limit_mb=spec.memory_limit_mb,
                log=[], tasks=[JobTask(slide_id=s, image_id=images[s], summary={}) for s in dict.fromkeys(spec.slide_ids)],
            )
            session.add(job)
            session.flush()
            self._audit.append(session, spec.requester, "job.create", dataset=dataset,
                               slide_id=spec.slide_ids[0] if len(spec.slide_ids) == 1 else None,
                               detail={"job": job.uuid, "algorithm": spec.algorithm, "version": spec.version,
                                       "slides": len(job.tasks), "parameters": spec.parameters})
            return self._json(job, tasks=False)

    def get(self, job_uuid: str, tasks: bool = True) -> dict[str, Any]:
        with self._uow.read() as session:
            return self._json(self._job(session, job_uuid), tasks=tasks)

    def list(self, requester: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self._uow.read() as session:
            statement = select(Job).order_by(Job.id.desc()).limit(limit)
            if requester is not None:
                statement = statement.where(Job.requester == requester)
            return [self._json(job, tasks=False) for job in session.scalars(statement)]

    def cancel(self, job_uuid: str, actor: str) -> dict[str, Any]:
        """Ask a job to stop: a queued job is cancelled at once, a running one by its runner."""
        with self._uow.write() as session:
            job = self._job(session, job_uuid)
            self._audit.append(session, actor, "job.cancel", detail={"job": job_uuid})
            if job.state == "queued":
                self._finish(session, job, "cancelled", "cancelled before it started")
            elif job.state == "running":
                job.cancel_requested = True
            return self._json(job, tasks=False)

    # --- for runners --------------------------------------------------------------------------------

    def claimable(self) -> builtins.list[str]:
        """Queued jobs, and running ones whose runner stopped (no heartbeat for STALE_AFTER)."""
        with self._uow.read() as session:
            return list(session.scalars(
                select(Job.uuid).where(self._claimable_condition()).order_by(Job.id)
            ))

    def claim(self, job_uuid: str, scheduler: str) -> bool:
        now = utcnow()
        with self._uow.write() as session:
            result = session.execute(
                update(Job).where(Job.uuid == job_uuid, self._claimable_condition())
                .values(state="running", runner=runner_name(), scheduler=scheduler, heartbeat_at=now,
                        started_at=func.coalesce(Job.started_at, now))
            )
            if getattr(result, "rowcount", 0) != 1:
                return False
            job = self._job(session, job_uuid)
            for task in job.tasks:
                if task.state == "running":  # the previous runner died with it in flight
                    task.state = "queued"
            self._append_log(job, f"claimed by {runner_name()} on {scheduler}")
            return True

    def pending_tasks(self, job_uuid: str) -> builtins.list[dict[str, Any]]:
        with self._uow.read() as session:
            job = self._job(session, job_uuid)
            return [self._task_json(t) for t in job.tasks if t.state in ("queued", "running")]

    def heartbeat(self, job_uuid: str) -> bool:
        """Keep the claim alive; returns whether cancellation was asked for."""
        with self._uow.write() as session:
            job = self._job(session, job_uuid)
            job.heartbeat_at = utcnow()
            return job.cancel_requested

    def cancel_requested(self, job_uuid: str) -> bool:
        with self._uow.read() as session:
            return bool(session.scalar(select(Job.cancel_requested).where(Job.uuid == job_uuid)))

    def task_started(self, job_uuid: str, slide_id: str) -> None:
        with self._uow.write() as session:
            task = self._task(session, job_uuid, slide_id)
            task.state, task.started_at, task.attempts = "running", utcnow(), task.attempts + 1

    def task_finished(
        self, job_uuid: str, slide_id: str, state: str, *, seconds: float | None = None,
        error: str | None = None, summary: dict[str, Any] | None = None, input_sha256: str | None = None,
    ) -> None:
        with self._uow.write() as session:
            self.finish_task(session, job_uuid, slide_id, state, seconds=seconds, error=error, summary=summary,
                             input_sha256=input_sha256)

    def finish_task(
        self, session: Session, job_uuid: str, slide_id: str, state: str, *, seconds: float | None = None,
        error: str | None = None, summary: dict[str, Any] | None = None, input_sha256: str | None = None,
    ) -> None:
        """In the caller's transaction: a task's end, committed with the results it stored."""
        task = self._task(session, job_uuid, slide_id)
        task.state, task.finished_at, task.seconds, task.error = state, utcnow(), seconds, error
        task.summary = summary or {}
        task.input_sha256 = input_sha256 or task.input_sha256

    def log(self, job_uuid: str, line: str) -> None:
        with self._uow.write() as session:
            self._append_log(self._job(session, job_uuid), line)

    def finish(self, job_uuid: str, state: str, error: str | None = None) -> dict[str, Any]:
        with self._uow.write() as session:
            job = self._job(session, job_uuid)
            if state != "done":  # what never ran, or was cut off, did not finish
                for task in job.tasks:
                    if task.state in ("queued", "running"):
                        task.state = "cancelled"
            self._finish(session, job, state, error)
            return self._json(job, tasks=False)

    @staticmethod
    def forget_slides(session: Session, slide_ids: Sequence[str]) -> int:
        """Erasure, in its transaction: drop what job records say about these slides (results, errors,
        input digests)."""
        if not slide_ids:
            return 0
        result = session.execute(
            update(JobTask).where(JobTask.slide_id.in_(list(slide_ids)))
            .values(summary={}, error=None, input_sha256=None)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    def job_id(self, job_uuid: str) -> int:
        with self._uow.read() as session:
            return self._job(session, job_uuid).id

    # --- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _claimable_condition() -> Any:
        stale = utcnow() - STALE_AFTER
        return or_(Job.state == "queued", (Job.state == "running") & (Job.heartbeat_at < stale))

    def _finish(self, session: Session, job: Job, state: str, error: str | None) -> None:
        job.state, job.finished_at, job.error, job.runner = state, utcnow(), error, None
        self._append_log(job, f"{state}" + (f": {error}" if error else ""))

    @staticmethod
    def _append_log(job: Job, line: str) -> None:
        stamp = utcnow().strftime("%H:%M:%S")
        job.log = [*(job.log or []), f"{stamp} {line}"][-MAX_LOG_LINES:]

    @staticmethod
    def _job(session: Session, job_uuid: str) -> Job:
        job = session.scalar(select(Job).where(Job.uuid == job_uuid).options(selectinload(Job.tasks)))
        if job is None:
            raise JobNotFound(f"no job {job_uuid!r}")
        return job

    def _task(self, session: Session, job_uuid: str, slide_id: str) -> JobTask:
        job = self._job(session, job_uuid)
        task = next((t for t in job.tasks if t.slide_id == slide_id), None)
        if task is None:
            raise JobNotFound(f"job {job_uuid} has no slide {slide_id!r}")
        return task

    @staticmethod
    def _task_json(task: JobTask) -> dict[str, Any]:
        return {
            "slide_id": task.slide_id, "state": task.state, "attempts": task.attempts,
            "input_sha256": task.input_sha256, "seconds": task.seconds, "error": task.error,
            "summary": task.summary or {}, "started_at": iso_utc(task.started_at), "finished_at": iso_utc(task.finished_at),
        }

    def _json(self, job: Job, tasks: bool) -> dict[str, Any]:
        counts = {state: 0 for state in ("queued", "running", "done", "failed", "cancelled")}
        for task in job.tasks:
            counts[task.state] += 1
        finished = counts["done"] + counts["failed"] + counts["cancelled"]
        body = {
            "id": job.uuid, "algorithm": job.algorithm, "version": job.algorithm_version,
            "parameters": job.parameters, "requester": job.requester, "state": job.state,
            "cancel_requested": job.cancel_requested,
            "progress": {"done": finished, "total": len(job.tasks), "tasks": counts},
            "slides": [task.slide_id for task in job.tasks[:MAX_LISTED_SLIDES]],
            "limits": {"time_s": job.time_limit_s, "memory_mb": job.memory_limit_mb},
            "runner": job.runner, "scheduler": job.scheduler,
            "created_at": iso_utc(job.created_at), "started_at": iso_utc(job.started_at),
            "finished_at": iso_utc(job.finished_at), "error": job.error, "log": list(job.log or []),
        }
        if tasks:
            body["tasks"] = [self._task_json(t) for t in job.tasks]
        return body

