"""Durable job records: a job per algorithm run, a task per slide, claimed, heartbeated, resumed."""

from slidebank.jobs.service import JobError, JobNotFound, Jobs, JobSpec

__all__ = ["JobError", "JobNotFound", "JobSpec", "Jobs"]
