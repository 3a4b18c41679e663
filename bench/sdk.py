"""SDK benchmark: random 256x256 level-0 patches through `slidebank.client` over loopback vs OpenSlide.

The slide of bench/regions.py (1 Gpx of real H&E pixels, 512-px JPEG tiles; built and ingested
once, cached under bench/.work) is served by `slidebank serve` (2 worker processes) on this machine.
In one run, on the same seeded places:

  - OpenSlide `read_region` on the original SVS (the file on local disk, no server): one thread,
    and 4 threads sharing the slide;
  - the SDK's `RemoteSlide.read_region` (PIL RGBA, as OpenSlide) against the server: one reader,
    4 threads sharing one client, and 4 reader processes (as DataLoader workers), each its own client.

Each SDK read fetches the stored frames the patch spans in one request, decodes them locally and
keeps them in the client's frame cache; "cold" reads new places with an empty cache, "warm"
reads new places after the cache has seen part of the slide (what later epochs see). Server and
client share the machine's cores, as they would not in production: compare within one run.

Run from the repository root:  .venv/bin/python bench/sdk.py [--size-gpx 1.0] [--patches 1000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openslide
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regions import SLIDE_ID, cached_slide, ingested_node  # noqa: E402  (bench scripts are not a package)
from slidebank.client import Client  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PATCH = 256
READERS = 4
console = Console(width=None if sys.stdout.isatty() else 132)

Place = tuple[int, int]


def places(count: int, size: tuple[int, int], seed: int) -> list[Place]:
    rng = random.Random(seed)
    return [(rng.randrange(0, size[0] - PATCH), rng.randrange(0, size[1] - PATCH)) for _ in range(count)]


def slidebank(home: Path, *args: str) -> str:
    done = subprocess.run([str(BIN / "slidebank"), *args], env={**os.environ, "SLIDEBANK_HOME": str(home)},
                          capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"slidebank {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def bench_token(home: Path) -> str:
    """A token of an administrator made for the benchmark (the auto-created dataset is controlled)."""
    users = slidebank(home, "users", "list", "--json")
    if "sdk-bench" not in users:
        slidebank(home, "users", "add", "sdk-bench", "--role", "administrator")
    return slidebank(home, "tokens", "create", "sdk-bench", "--label", "bench", "--expires", "1").strip().splitlines()[-1]


def start_server(home: Path, workers: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [str(BIN / "slidebank"), "serve", "--port", str(port), "--workers", str(workers), "--no-jobs",
         "--no-access-log"], env={**os.environ, "SLIDEBANK_HOME": str(home)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    sys.exit("slidebank serve did not start")


def served_slide(workdir: Path, gpx: float, workers: int) -> tuple[Path, str, subprocess.Popen, str]:
    """The benchmark slide (built and ingested once), an administrator's token and a running server:
    (source file, token, server process, base URL)."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = cached_slide(workdir, gpx)
    home = ingested_node(workdir, source, fresh=False)
    token = bench_token(home)
    server, base = start_server(home, workers)
    return source, token, server, base


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:  # Granian can hang when stopped while a worker still starts
        os.killpg(server.pid, 9)


def rate(read: Callable[[Place], Any], chosen: Sequence[Place], threads: int = 1) -> float:
    start = time.perf_counter()
    if threads == 1:
        for place in chosen:
            read(place)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(read, chosen))
    return len(chosen) / (time.perf_counter() - start)


def reader_process(base: str, token: str, chosen: list[Place], start_at: float, queue: Any) -> None:
    """One DataLoader-like worker: its own client, its share of the places."""
    with Client(base, token, progress=False) as bank, bank.open(SLIDE_ID) as slide:
        slide.read_region(chosen[0], 0, (PATCH, PATCH))  # connection and pyramid open before the clock
        while time.time() < start_at:
            time.sleep(0.001)
        began = time.perf_counter()
        for place in chosen:
            slide.read_region(place, 0, (PATCH, PATCH))
        queue.put((len(chosen), time.perf_counter() - began))


def processes_rate(base: str, token: str, chosen: list[Place]) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start_at = time.time() + 5  # every process has started and warmed up
    shares = [chosen[i::READERS] for i in range(READERS)]
    workers = [context.Process(target=reader_process, args=(base, token, share, start_at, queue)) for share in shares]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(count for count, _ in results) / max(seconds for _, seconds in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gpx", type=float, default=1.0)
    parser.add_argument("--patches", type=int, default=1000, help="patches per reader and measurement")
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work")
    args = parser.parse_args()
    source, token, server, base = served_slide(args.workdir, args.size_gpx, args.server_workers)
    rows: list[tuple[str, float, float]] = []
    try:
        with openslide.OpenSlide(str(source)) as reference:
            size = reference.dimensions
            console.print(f"slide {size[0]}x{size[1]}, {PATCH}x{PATCH} level-0 patches, {args.patches} per "
                          f"measurement, server: {args.server_workers} workers on this machine (nproc={os.cpu_count()})")
            n = args.patches
            batches = iter(places(n * 8, size, args.seed)[i * n:(i + 1) * n] for i in range(8))
            openslide_one = rate(lambda p: reference.read_region(p, 0, (PATCH, PATCH)), next(batches))
            openslide_four = rate(lambda p: reference.read_region(p, 0, (PATCH, PATCH)), next(batches), READERS)
        with Client(base, token, progress=False) as bank, bank.open(SLIDE_ID) as slide:
            slide.read_region((0, 0), 0, (PATCH, PATCH))
            bank.cache.clear()
            cold_one = rate(lambda p: slide.read_region(p, 0, (PATCH, PATCH)), next(batches))
            bank.cache.clear()
            cold_four = rate(lambda p: slide.read_region(p, 0, (PATCH, PATCH)), next(batches), READERS)
            warm_four = rate(lambda p: slide.read_region(p, 0, (PATCH, PATCH)), next(batches), READERS)
            cache_mb = bank.cache.current_bytes / 2**20
        four_processes = processes_rate(base, token, next(batches))
    finally:
        stop_server(server)
    rows = [
        ("OpenSlide read_region, local file, 1 thread", openslide_one, 1.0),
        ("SDK read_region over loopback, 1 reader, cold cache", cold_one, cold_one / openslide_one),
        ("OpenSlide read_region, local file, 4 threads", openslide_four, openslide_four / openslide_one),
        ("SDK, 4 threads sharing one client, cold cache", cold_four, cold_four / openslide_four),
        (f"SDK, 4 threads, cache holding {cache_mb:.0f} MB", warm_four, warm_four / openslide_four),
        ("SDK, 4 reader processes (DataLoader workers), cold", four_processes, four_processes / openslide_four),
    ]
    table = Table(title="Random 256x256 level-0 patches")
    for column in ("reader", "patches/s", "ratio"):
        table.add_column(column, justify="left" if column == "reader" else "right")
    for name, value, ratio in rows:
        table.add_row(name, f"{value:,.0f}", f"{ratio:.2f}x")
    console.print(table)
    console.print("ratios: SDK 1 reader vs OpenSlide 1 thread; 4-reader rows vs OpenSlide 4 threads")
    print(json.dumps({name: round(value, 1) for name, value, _ in rows}))


if __name__ == "__main__":
    main()
