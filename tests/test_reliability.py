"""Crash safety and scale: SIGKILL mid-ingest, resume, and a >4 GB BigTIFF in bounded memory."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SLIDEBANK_BIN, json_lines, run_cli
from databases import database_env, open_node


def _assert_consistent(home: Path) -> int:
    """Every blob the catalog references exists, decrypts and hashes right; returns the number of slides."""
    node = open_node(home)
    try:
        for summary in node.catalog.list_slides():
            for stored in node.catalog.stored_files(summary["slide_id"]):
                assert node.store.exists(stored.sha256), f"catalog points to missing blob {stored.sha256}"
                blob = node.open_blob(stored)
                try:
                    assert blob.size == stored.size
                    assert hashlib.sha256(blob.pread(0, blob.size)).hexdigest() == stored.sha256
                finally:
                    blob.close()
        return len(node.catalog.list_slides())
    finally:
        node.close()


@pytest.mark.slow
def test_sigkill_at_several_points_leaves_a_consistent_store_and_resumes(tmp_path: Path, synthetic_dir: Path) -> None:
    from slidebank.synth import write_synthetic_slide

    folder = tmp_path / "incoming"
    folder.mkdir()
    for seed in range(4):
        write_synthetic_slide(folder / f"s{seed}.svs", 2500 + 100 * seed, 2000, vendor="aperio", seed=seed + 20)
    home = tmp_path / "node"
    env = {**os.environ, "SLIDEBANK_HOME": str(home), **database_env(home)}

    started = time.monotonic()
    reference = run_cli("ingest", str(folder), "--json", home=tmp_path / "reference", check=True)
    full_run = time.monotonic() - started
    assert len(json_lines(reference.stdout)) == 4

    # Kill at early, middle and late points of a run, each time resuming from what the last left.
    for fraction in (0.15, 0.35, 0.55, 0.75, 0.9):
        process = subprocess.Popen(
            [str(SLIDEBANK_BIN), "ingest", str(folder), "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        time.sleep(full_run * fraction)
        process.send_signal(signal.SIGKILL)
        process.wait()
        _assert_consistent(home)

    final = run_cli("ingest", str(folder), "--json", home=home)
    assert final.returncode == 0, final.stderr
    assert {line["status"] for line in json_lines(final.stdout)} <= {"ingested", "duplicate"}
    assert _assert_consistent(home) == 4
    node = open_node(home)
    try:
        referenced = node.catalog.referenced_blobs()
        assert set(node.store.iter_blobs()) == referenced, "orphan blobs were not cleaned up"
        assert not any(node.store.staging.iterdir())
    finally:
        node.close()


@pytest.mark.slow
def test_bigtiff_over_4gb_ingests_in_bounded_memory(tmp_path: Path) -> None:
    from slidebank.synth import write_large_slide_from_tile

    free = shutil.disk_usage(tmp_path).free
    if free < 14 * 1024**3:
        pytest.skip(f"needs ~14 GB free in {tmp_path}, have {free / 1024**3:.1f} GB")
    source = tmp_path / "huge.svs"
    slide = write_large_slide_from_tile(source, 65_536, 49_152, tile_size=512, vendor="aperio", bigtiff=True)
    try:
        size = source.stat().st_size
        assert size > 4 * 1024**3, f"test slide is only {size / 1024**3:.2f} GB"
        home = tmp_path / "node"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result = run_cli("ingest", str(source), "--json", home=home, timeout=1500)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        assert result.returncode == 0, result.stderr[-2000:]
        [line] = json_lines(result.stdout)
        assert line["status"] == "ingested"
        assert max(peak_kib, before) < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
        shown = json_lines(run_cli("slides", "show", line["slide_id"], "--json", home=home, check=True).stdout)[0]
        assert (shown["width"], shown["height"]) == (slide.width, slide.height)
        assert shown["source_size"] == size
        assert shown["provenance"]["conversion"] == "tile-copy"
    finally:
        source.unlink(missing_ok=True)
        shutil.rmtree(tmp_path / "node", ignore_errors=True)


def test_recovery_removes_what_a_crash_published_and_nothing_else(tmp_path: Path, generic_slide) -> None:  # noqa: ANN001
    """A blob published by an ingest that died before registering it is logged first, so recovery
    deletes it without listing the store; a blob it was never told about is left to a full sweep."""
    home = tmp_path / "node"
    [line] = json_lines(run_cli("ingest", str(generic_slide.path), "--no-qc", "--json", home=home, check=True).stdout)
    node = open_node(home)
    try:
        with node.store.staging_dir() as staging:
            crashed, foreign = staging / "crashed", staging / "foreign"
            crashed.write_bytes(b"published, never registered")
            foreign.write_bytes(b"not put there by an ingest")
            orphan = node.store.publish(crashed, node.keys, intend=node.catalog.note_pending_blob).sha256
            unknown = node.store.publish(foreign, node.keys).sha256
        kept = {f.sha256 for f in node.catalog.stored_files(line["slide_id"])}
        node.catalog.note_pending_blob(next(iter(kept)))  # logged, and registered after all: kept
        assert node.recover() == [orphan]
        assert not node.store.exists(orphan) and node.store.exists(unknown)
        assert all(node.store.exists(digest) for digest in kept)
        assert node.recover() == []  # the log is settled
        swept = run_cli("store", "sweep", "--json", home=home, check=True)  # the full sweep, an operator's command
        assert json.loads(swept.stdout) == {"removed": [unknown]}
        assert not node.store.exists(unknown) and all(node.store.exists(digest) for digest in kept)
    finally:
        node.close()
