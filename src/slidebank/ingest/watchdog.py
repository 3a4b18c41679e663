"""Supervised worker processes: every task runs under a time limit and a memory cap.

Third-party decoders and writers can hang (a pyramid writer waiting forever on its own threads) or
balloon on hostile input; a batch of thousands of slides must not stall or fall over because of one.
Each task runs in a long-lived worker process; the parent watches its wall time and the resident
memory of the worker and its children, and past either limit kills the worker, reports the task as
exceeded, and starts a fresh worker for the rest. A worker that dies (a segfault in a codec, the
kernel's OOM killer) is reported the same way and replaced. A task's clock starts when its worker
takes it, not while a fresh worker is still starting (importing the converters takes seconds on a
busy machine, and would eat into small limits); a worker that never starts is stopped after
STARTUP_SECONDS.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Generic, TypeVar

import psutil

POLL_SECONDS = 0.2
STARTUP_SECONDS = 300.0  # a worker that has not taken its first task by then never will
_STARTED = "started"  # what a worker says when it takes a task
K = TypeVar("K")


@dataclass(frozen=True)
class Finished:
    value: Any


@dataclass(frozen=True)
class Failed:
    """The task raised (in the worker), went over a limit, or its worker died; `reason` says which."""

    reason: str


@dataclass(frozen=True)
class Limits:
    seconds: float
    memory_bytes: int


def _worker_main(connection: Connection, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        if message is None:
            return
        function, args = message
        connection.send(_STARTED)
        try:
            result: Finished | Failed = Finished(function(*args))
        except Exception as error:  # noqa: BLE001 - the parent reports it; the worker carries on
            result = Failed(f"{type(error).__name__}: {error}")
        connection.send(result)


@dataclass
class _Worker:
    process: BaseProcess
    connection: Connection
    task: Any = None  # the key of the task it runs, None when idle
    started: float = 0.0  # when the task was handed over, then when the worker took it
    limits: Limits | None = None
    running: bool = False  # the worker has taken its task: its time limit runs


class SupervisedPool(Generic[K]):
    """`workers` processes running submitted tasks under per-task limits; results as they come."""

    def __init__(self, workers: int, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        self._context = multiprocessing.get_context("spawn")  # the parent may hold threads and locks
        self._initializer, self._initargs = initializer, initargs
        self._workers = [self._start() for _ in range(max(1, workers))]
        self._queue: deque[tuple[K, Callable[..., Any], tuple[Any, ...], Limits]] = deque()

    def _start(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child, self._initializer, self._initargs),
                                        daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def submit(self, key: K, function: Callable[..., Any], args: tuple[Any, ...], limits: Limits) -> None:
        self._queue.append((key, function, args, limits))

    def results(self) -> Iterator[tuple[K, Finished | Failed]]:
        """Run everything submitted; yield (key, outcome) in completion order."""
        while self._queue or any(w.task is not None for w in self._workers):
            for worker in self._workers:
                if worker.task is None and self._queue:
                    key, function, args, limits = self._queue.popleft()
                    worker.task, worker.started, worker.limits, worker.running = key, time.monotonic(), limits, False
                    worker.connection.send((function, args))
            busy = [w for w in self._workers if w.task is not None]
            ready = wait([w.connection for w in busy], timeout=POLL_SECONDS)
            for index, worker in enumerate(self._workers):
                if worker.task is None:
                    continue
                outcome = self._collect(worker) if worker.connection in ready else self._check(worker)
                if outcome is not None:
                    key = worker.task
                    worker.task = None
                    if isinstance(outcome, Failed) and not worker.process.is_alive():
                        self._workers[index] = self._start()
                    yield key, outcome

    def _collect(self, worker: _Worker) -> Finished | Failed | None:
        try:
            message = worker.connection.recv()
            if message == _STARTED:
                worker.running, worker.started = True, time.monotonic()
                return None
            return message
        except (EOFError, OSError):
            worker.connection.close()
            worker.process.join(timeout=5)
            code = worker.process.exitcode
            reason = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            return Failed(f"the worker process died ({reason}): out of memory or a crash in a decoder")

    def _check(self, worker: _Worker) -> Failed | None:
        limits = worker.limits
        assert limits is not None
        elapsed = time.monotonic() - worker.started
        if not worker.running and elapsed > STARTUP_SECONDS:
            self._kill(worker)
            return Failed(f"its worker process did not start in {STARTUP_SECONDS:.0f} s; stopped")
        if worker.running and elapsed > limits.seconds:
            self._kill(worker)
            return Failed(f"took longer than {limits.seconds:.0f} s, the limit for its size; stopped")
        rss = _tree_rss(worker.process.pid)
        if rss > limits.memory_bytes:
            self._kill(worker)
            return Failed(f"used {rss / 2**20:.0f} MiB, over the {limits.memory_bytes / 2**20:.0f} MiB cap; stopped")
        return None

    @staticmethod
    def _kill(worker: _Worker) -> None:
        pid = worker.process.pid
        for child in _children(pid):
            child.kill()
        worker.process.kill()
        worker.process.join(timeout=10)
        worker.connection.close()

    def close(self) -> None:
        for worker in self._workers:
            if worker.process.is_alive():
                try:
                    worker.connection.send(None)
                except OSError:
                    pass
                worker.process.join(timeout=5)
                if worker.process.is_alive():
                    self._kill(worker)

    def __enter__(self) -> SupervisedPool[K]:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _children(pid: int | None) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _tree_rss(pid: int | None) -> int:
    """Resident bytes of a process and its descendants (0 if it is gone)."""
    total = 0
    try:
        total = psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0
    for child in _children(pid):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


__all__ = ["Failed", "Finished", "Limits", "SupervisedPool"]
