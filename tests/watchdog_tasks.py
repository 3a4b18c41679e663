"""Tasks for SupervisedPool tests, importable in its spawned worker processes (which must find them
by module name, so they cannot live in a test module that pulls in the whole test suite's imports)."""

from __future__ import annotations

import os
import signal
import threading


def pid_of_worker() -> int:
    return os.getpid()


def sleep_forever() -> None:
    threading.Event().wait()


def hold_memory(megabytes: int) -> None:
    """Touch `megabytes` of memory (so it is resident, not just reserved) and keep it."""
    hoard = bytearray(b"\x01" * (megabytes << 20))
    threading.Event().wait()
    del hoard


def die(how: str) -> None:
    if how == "exit":
        os._exit(3)  # like a C library calling exit() from a codec
    os.kill(os.getpid(), signal.SIGKILL)  # like the kernel's OOM killer


def refuse(reason: str) -> None:
    raise ValueError(reason)


def slow_start(seconds: float) -> None:
    """A worker initializer as slow as importing the converters on a busy machine."""
    threading.Event().wait(seconds)
