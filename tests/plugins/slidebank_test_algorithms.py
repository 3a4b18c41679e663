"""Third-party-style algorithm plug-ins for the job tests: registered through an entry point in a
dist-info folder that tests put on PYTHONPATH, exactly as an installed package would be."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from slidebank.algorithms.base import Parameter, Reads, SimpleAlgorithm, SlideResult, TaskContext
from slidebank.algorithms.reader import SlideReader


def _sleepy(slide: SlideReader, params: Mapping[str, Any], context: TaskContext) -> SlideResult:
    """Reads one overview, then waits `seconds` in small steps (checking for cancel and limits)."""
    overview, _ = slide.overview(16.0)
    deadline = time.monotonic() + params["seconds"]
    while time.monotonic() < deadline:
        context.check()
        time.sleep(0.05)
    return SlideResult(values={"sleepy.mean_red": float(overview[..., 0].mean())})


def _hog(slide: SlideReader, params: Mapping[str, Any], context: TaskContext) -> SlideResult:
    """Allocates `mib` MiB, one MiB at a time, checking limits as it goes."""
    held = []
    for _ in range(params["mib"]):
        held.append(np.ones(2**20, dtype=np.uint8))
        context.check()
    return SlideResult(values={"hog.mib": float(len(held))})


def _crash_once(slide: SlideReader, params: Mapping[str, Any], context: TaskContext) -> SlideResult:
    """Kills its worker process the first time it runs for a slide (a lost worker), then succeeds."""
    marker = Path(params["marker_dir"]) / f"{slide.slide_id}.crashed"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return SlideResult(values={"crash.pid": float(os.getpid())})


SLEEPY = SimpleAlgorithm("sleepy", "0.1.0", "Waits; for cancellation and restart tests.",
                         (Parameter("seconds", float, 2.0, "how long", 0),), Reads("overview", 16.0),
                         ("values",), _sleepy)
HOG = SimpleAlgorithm("hog", "0.1.0", "Allocates memory; for memory-limit tests.",
                      (Parameter("mib", int, 64, "how much", 1),), Reads("overview"), ("values",), _hog)
CRASH_ONCE = SimpleAlgorithm("crash-once", "0.1.0", "Kills its worker once; for retry tests.",
                             (Parameter("marker_dir", str, "/tmp", "where it remembers crashing"),),
                             Reads("overview"), ("values",), _crash_once)
