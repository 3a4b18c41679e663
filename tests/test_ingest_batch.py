"""Batch ingest under supervision: a batch holding a file that hangs the writer, a 16-bit image, a
fluorescence image and a truncated file finishes, says what happened to every file, ingests the good
ones and keeps nothing of the others; and the supervised worker pool itself, one failure at a time.

The hang is real: `tests/hanging_writer/sitecustomize.py`, on PYTHONPATH of the `slidebank` process
(and so of every worker it spawns), makes wsidicomizer's save block forever for a source whose name
contains "hang"; the watchdog has to stop a worker that really is stuck in the writer."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import psutil
import pytest

import watchdog_tasks as tasks
from conftest import json_lines, run_cli
from databases import open_node
from slidebank.ingest.watchdog import Failed, Finished, Limits, SupervisedPool
from slidebank.storage import sha256_file
from slidebank.synth import modalities as m

HANGING_WRITER = Path(__file__).resolve().parent / "hanging_writer"
TIME_LIMIT_S = 10  # per slide (nothing more per GB); a worker's start-up is not counted
GOOD = 16
BAD = {"a-hang-in-the-writer.svs", "deep-grey16.tiff", "fluorescence.ome.tiff", "truncated.svs"}


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """20 tiny slides: 15 JPEG SVS of different sizes (so none is a duplicate of another) and an 8-bit
    grey DICOM, all needing levels added; one that hangs, a 16-bit grey TIFF, a 4-channel fluorescence
    OME-TIFF and the first half of an SVS."""
    folder = tmp_path / "batch"
    for index in range(GOOD - 1):
        m.write_aperio_jpeg_svs(folder / f"good-{index:02d}.svs", width=96 + 8 * index, height=64 + 4 * index, levels=1)
    m.write_grey8_dicom(folder / "good-grey", levels=1)
    m.write_aperio_jpeg_svs(folder / "a-hang-in-the-writer.svs", width=100, height=72, levels=1)
    m.write_grey16_tiff(folder / "deep-grey16.tiff")
    m.write_multichannel_ome_tiff(folder / "fluorescence.ome.tiff")
    whole = m.write_aperio_jpeg_svs(tmp_path / "whole.svs", width=320, height=240, levels=2)
    (folder / "truncated.svs").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return folder


def test_a_batch_with_a_hanging_a_deep_a_fluorescence_and_a_truncated_file(batch: Path, tmp_path: Path) -> None:
    home, marker, scratch = tmp_path / "node", tmp_path / "hung", tmp_path / "tmp"
    scratch.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(HANGING_WRITER), os.environ.get("PYTHONPATH")) if p),
        "SLIDEBANK_INGEST_TIME_LIMIT_S": str(TIME_LIMIT_S),
        "SLIDEBANK_INGEST_SECONDS_PER_GB": "0",
        "SLIDEBANK_TEST_HANG_MARKER": str(marker),
        "TMPDIR": str(scratch),  # where a killed converter would leave its temporary files
    }
    result = run_cli("ingest", str(batch), "--json", "--no-qc", "--workers", "2", home=home, env=env, timeout=600)
    assert result.returncode == 1, result.stderr

    lines = json_lines(result.stdout)  # one per file, as each finished
    by_name = {Path(line["path"]).relative_to(batch).parts[0]: line for line in lines}
    assert len(lines) == len(by_name) == GOOD + len(BAD)
    rejected = {name: line["error"] for name, line in by_name.items() if line["status"] == "rejected"}
    assert set(rejected) == BAD
    assert re.fullmatch(rf"took longer than {TIME_LIMIT_S} s, the limit for its size; stopped",
                        rejected["a-hang-in-the-writer.svs"])
    assert rejected["deep-grey16.tiff"].startswith("16-bit grey image: Slidebank stores 8-bit brightfield slides")
    assert rejected["fluorescence.ome.tiff"].startswith("multi-channel fluorescence image (4 channels")
    assert "transfer" in rejected["truncated.svs"] or "damaged" in rejected["truncated.svs"]
    assert all("\n" not in reason for reason in rejected.values())
    ingested = {line["slide_id"] for line in lines if line["status"] == "ingested"}
    assert len(ingested) == GOOD

    # The hang was real (a worker blocked in the writer), and that worker is gone.
    [hung] = [int(path.name) for path in marker.iterdir()]
    assert not psutil.pid_exists(hung)

    # Nothing of the hung slide stays: no catalog row, no blob, nothing staged, no temporary files.
    node = open_node(home)
    try:
        assert {slide["slide_id"] for slide in node.catalog.list_slides()} == ingested
        assert node.catalog.slide_id_for_source(sha256_file(batch / "a-hang-in-the-writer.svs").sha256) is None
        assert set(node.store.iter_blobs()) == node.catalog.referenced_blobs()
        assert not any(node.store.staging.iterdir())
    finally:
        node.close()
    assert not list(scratch.rglob("*")), "a converter's temporary files were left behind"


# --------------------------------------------------------------------------------------------
# The supervised pool on its own
# --------------------------------------------------------------------------------------------

PLENTY = 8 * 2**30  # no memory cap to speak of


def test_supervised_pool_stops_what_hangs_hogs_or_dies_and_goes_on() -> None:
    """One worker, so each failure must be survived for the next task to run at all."""
    generous = Limits(60, PLENTY)
    with SupervisedPool[str](1) as pool:
        pool.submit("first", tasks.pid_of_worker, (), generous)
        pool.submit("hang", tasks.sleep_forever, (), Limits(2, PLENTY))
        pool.submit("after hang", tasks.pid_of_worker, (), generous)
        pool.submit("hog", tasks.hold_memory, (300,), Limits(60, 150 * 2**20))
        pool.submit("after hog", tasks.pid_of_worker, (), generous)
        pool.submit("exit", tasks.die, ("exit",), generous)
        pool.submit("killed", tasks.die, ("kill",), generous)
        pool.submit("raises", tasks.refuse, ("not a slide",), generous)
        pool.submit("last", tasks.pid_of_worker, (), generous)
        started = time.monotonic()
        results = list(pool.results())
        elapsed = time.monotonic() - started

    assert [key for key, _ in results] == ["first", "hang", "after hang", "hog", "after hog", "exit", "killed",
                                           "raises", "last"]  # one worker: in order
    outcome = dict(results)
    assert outcome["hang"] == Failed("took longer than 2 s, the limit for its size; stopped")
    assert isinstance(outcome["hog"], Failed)
    assert re.fullmatch(r"used \d+ MiB, over the 150 MiB cap; stopped", outcome["hog"].reason)
    assert outcome["exit"] == Failed("the worker process died (exit status 3): out of memory or a crash in a decoder")
    assert outcome["killed"] == Failed("the worker process died (signal 9): out of memory or a crash in a decoder")
    assert outcome["raises"] == Failed("ValueError: not a slide")  # the worker survives an exception

    pids = {key: value.value for key, value in outcome.items() if isinstance(value, Finished)}
    assert set(pids) == {"first", "after hang", "after hog", "last"}
    assert len(set(pids.values())) == 4, "every stopped or dead worker was replaced by a new process"
    assert not any(psutil.pid_exists(pid) for key, pid in pids.items() if key != "last")
    assert elapsed < 45


def test_supervised_pool_returns_results_as_they_come_from_several_workers() -> None:
    with SupervisedPool[int](2) as pool:
        for index in range(6):
            pool.submit(index, tasks.pid_of_worker, (), Limits(60, PLENTY))
        results = dict(pool.results())
    assert sorted(results) == list(range(6))
    assert all(isinstance(value, Finished) for value in results.values())
    assert len({value.value for value in results.values()}) == 2  # two long-lived workers share the tasks


def test_a_time_limit_does_not_count_the_worker_starting() -> None:
    """A fresh worker (after a kill, or the first) takes seconds to import the converters; that is not
    the slide's time. Here it takes 3 s to start, and the task, 1 s at most, takes none."""
    with SupervisedPool[str](1, tasks.slow_start, (3.0,)) as pool:
        pool.submit("quick", tasks.pid_of_worker, (), Limits(1, PLENTY))
        [(_, outcome)] = list(pool.results())
    assert isinstance(outcome, Finished), outcome
