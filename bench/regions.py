"""Region-read benchmark: Slidebank's StoredSlide vs OpenSlide, tiffslide and wsidicom, in one process.

One slide built from real H&E pixels (CMU-1-Small-Region mirrored, JPEG q70, 512-px tiles, as
bench/process.py builds it, and cached under the same name) is ingested into a node (encrypted at
rest, as stored). Then, in this one process and on the same seeded coordinates, each reader answers
the same reads:

  - Slidebank StoredSlide on the stored, encrypted DICOM: `read_region` (PIL RGBA, OpenSlide's
    API) and `read_region_array` (numpy RGB), with its decoded-frame cache and without one;
  - OpenSlide `read_region` and tiffslide `read_region` on the original SVS;
  - wsidicom `read_region` on the stored files (decrypting: what Slidebank's readers use today);
  - libjpeg-turbo alone decoding stored frames on one core: the moonshot reference.

Three kinds of reads: random unaligned 256x256 level-0 patches (what patch samplers ask),
256x256 patches on the 256-px grid (one frame each, part of it) and whole 512x512 tiles. "cold" is
the first pass of a freshly opened reader, each reader alone (Slidebank and wsidicom: decrypted
segments and decoded frames not cached; the files are in the OS page cache for everyone). "warm"
reads other places once every stored byte has been decrypted (the segment cache holds the slide),
all readers open and taking turns, 20 reads each, so that they share the machine's load alike:
timings on a shared machine are noisy, compare readers within one run, not runs. Threads: one
and several threads alternate chunks of the same kind of reads.

Run from the repository root:  .venv/bin/python bench/regions.py [--size-gpx 1.0] [--regions 1000]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openslide
import tiffslide
from rich.console import Console
from rich.table import Table
from turbojpeg import TJPF_RGB, TurboJPEG
from wsidicom import WsiDicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import SOURCE, TILE, build_slide  # noqa: E402  (bench scripts are not a package)
from slidebank.node import Node, NodeSettings  # noqa: E402
from slidebank.slides.reader import FrameCache, StoredSlide  # noqa: E402
from slidebank.storage import crypt  # noqa: E402
from slidebank.storage.blobstore import BlobFile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SLIDE_ID = "regions-bench"
PATCH = 256
console = Console(width=None if sys.stdout.isatty() else 132)

Place = tuple[int, int]


def slide_size(gpx: float) -> tuple[int, int]:
    """As bench/process.py: about `gpx` gigapixels, 4:3, whole tiles."""
    width = math.ceil(math.sqrt(gpx * 1e9 * 4 / 3) / TILE) * TILE
    return width, math.ceil(gpx * 1e9 / width / TILE) * TILE


def cached_slide(workdir: Path, gpx: float) -> Path:
    width, height = slide_size(gpx)
    path = workdir / f"{SOURCE.stem}-mirrored-{width}x{height}-q70.svs"  # shared with bench/process.py
    if not path.exists():
        console.print(f"building {path.name} ...")
        build_slide(SOURCE, path, width, height)
    return path


def ingested_node(workdir: Path, source: Path, fresh: bool) -> Path:
    """A node holding the slide (reused while it holds this very source file)."""
    home = workdir / "regions-node"
    stamp = home / "source.txt"
    if fresh or not stamp.is_file() or stamp.read_text() != source.name:
        shutil.rmtree(home, ignore_errors=True)
        env = {**os.environ, "SLIDEBANK_HOME": str(home)}
        console.print(f"ingesting {source.name} (encrypted at rest) ...")
        for args in (["init"], ["ingest", str(source), "--slide-id", SLIDE_ID, "--no-qc"]):
            done = subprocess.run([str(BIN / "slidebank"), *args], env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"slidebank {' '.join(args)} failed:\n{done.stderr}")
        stamp.write_text(source.name)
    return home


@dataclass
class Reader:
    name: str
    open: Callable[[], Any]
    read: Callable[[Any, Place, tuple[int, int]], Any]
    close: Callable[[Any], None]
    threaded: bool = False  # also measured with several threads


def rate(read: Callable[[Place], Any], places: Sequence[Place]) -> float:
    start = time.perf_counter()
    for place in places:
        read(place)
    return len(places) / (time.perf_counter() - start)


def interleaved(reads: dict[str, Callable[[Place], Any]], places: Sequence[Place], chunk: int = 20) -> dict[str, float]:
    """Rates of several readers over the same places, taken in turns, a chunk each (who starts
    rotates), so that all of them see the same load of a shared machine."""
    spent = dict.fromkeys(reads, 0.0)
    names = list(reads)
    for turn, start in enumerate(range(0, len(places), chunk)):
        part = places[start : start + chunk]
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            began = time.perf_counter()
            for place in part:
                reads[name](place)
            spent[name] += time.perf_counter() - began
    return {name: len(places) / seconds for name, seconds in spent.items()}


def one_and_many_threads(read: Callable[[Place], Any], places: Sequence[Place], threads: int,
                         chunk: int = 50) -> tuple[float, float, float]:
    """Rates on one thread and on `threads` threads, alternating chunks of the places, and the
    CPU seconds per second the threads used (above 1: they ran in parallel, the GIL let go)."""
    spent, counts, cpu = [0.0, 0.0], [0, 0], 0.0
    chunk = max(1, min(chunk, len(places) // 4))
    with ThreadPoolExecutor(threads) as pool:
        for turn, start in enumerate(range(0, len(places), chunk)):
            part, many = places[start : start + chunk], turn % 2
            began, began_cpu = time.perf_counter(), time.process_time()
            if many:
                list(pool.map(read, part))
                cpu += time.process_time() - began_cpu
            else:
                for place in part:
                    read(place)
            spent[many] += time.perf_counter() - began
            counts[many] += len(part)
    return counts[0] / spent[0], counts[1] / spent[1], cpu / spent[1]


def warm_decryption(node: Node) -> None:
    """Read every stored byte once, so that the decrypted-segment cache holds the slide."""
    for stored in node.catalog.stored_files(SLIDE_ID):
        blob = node.open_blob(stored)
        try:
            for offset in range(0, blob.size, 1 << 22):
                blob.pread(offset, 1 << 22)
        finally:
            blob.close()


def readers(node: Node, source: Path) -> list[Reader]:
    files = [f for f in node.catalog.stored_files(SLIDE_ID) if f.role == "volume"]

    def blobs() -> list[BlobFile]:
        return [node.open_blob(f) for f in files]

    def stored(cache_mb: int) -> Callable[[], StoredSlide]:
        def open_() -> StoredSlide:
            with crypt._segment_lock:  # a cold start: no decrypted segment left from earlier readers
                crypt._segment_cache.clear()
            return StoredSlide(blobs(), frame_cache=FrameCache(cache_mb << 20))

        return open_

    def wsidicom_open() -> tuple[WsiDicom, list[BlobFile]]:
        with crypt._segment_lock:
            crypt._segment_cache.clear()
        opened = blobs()
        return WsiDicom.open_streams([blob.stream() for blob in opened]), opened

    def wsidicom_close(handle: tuple[WsiDicom, list[BlobFile]]) -> None:
        handle[0].close()
        for blob in handle[1]:
            blob.close()

    return [
        Reader("Slidebank read_region (RGBA PIL)", stored(128), lambda s, p, z: s.read_region(p, 0, z),
               lambda s: s.close(), threaded=True),
        Reader("Slidebank read_region_array (RGB numpy)", stored(128), lambda s, p, z: s.read_region_array(p, 0, z),
               lambda s: s.close(), threaded=True),
        Reader("Slidebank read_region_array, no frame cache", stored(0),
               lambda s, p, z: s.read_region_array(p, 0, z), lambda s: s.close()),
        Reader("OpenSlide read_region (RGBA PIL, source SVS)", lambda: openslide.OpenSlide(source),
               lambda s, p, z: s.read_region(p, 0, z), lambda s: s.close(), threaded=True),
        Reader("tiffslide read_region (RGB PIL, source SVS)", lambda: tiffslide.TiffSlide(source),
               lambda s, p, z: s.read_region(p, 0, z), lambda s: s.close()),
        Reader("tiffslide read_region as_array (source SVS)", lambda: tiffslide.TiffSlide(source),
               lambda s, p, z: s.read_region(p, 0, z, as_array=True), lambda s: s.close()),
        Reader("wsidicom read_region (stored, decrypting)", wsidicom_open,
               lambda h, p, z: h[0].read_region(p, 0, z), wsidicom_close),
    ]


def raw_decoder(node: Node, places: Sequence[Place]) -> tuple[Callable[[Place], Any], float]:
    """libjpeg-turbo alone (PyTurboJPEG, RGB, accurate IDCT, one core) decoding, for each place,
    the stored frame under its corner, read beforehand: one frame per call, so its rate is in
    frames/s. Also the frames an unaligned patch touches, on average."""
    files = [f for f in node.catalog.stored_files(SLIDE_ID) if f.role == "volume"]
    frames: dict[Place, bytes] = {}
    touched = 0
    with StoredSlide([node.open_blob(f) for f in files], frame_cache=FrameCache(0)) as slide:
        tile_width, tile_height = slide.level_tile_dimensions[0]
        for x, y in places:
            touched += ((x + PATCH - 1) // tile_width - x // tile_width + 1) * (
                (y + PATCH - 1) // tile_height - y // tile_height + 1)
            frames[(x, y)] = slide.read_encoded_tile(0, x // tile_width, y // tile_height, crop_to_level=False)
    decoder = TurboJPEG()
    return (lambda place: decoder.decode(frames[place], TJPF_RGB)), touched / len(places)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gpx", type=float, default=1.0, help="slide size in gigapixels")
    parser.add_argument("--regions", type=int, default=1000, help="reads per reader and pass")
    parser.add_argument("--repeat", type=int, default=2, help="warm passes, each over new places")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fresh", action="store_true", help="ingest again even if the node holds the slide")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work")
    args = parser.parse_args()
    if not SOURCE.is_file():
        sys.exit(f"source slide {SOURCE} is missing; it is needed to build the benchmark slide")
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = cached_slide(args.workdir, args.size_gpx)
    home = ingested_node(args.workdir, source, args.fresh)
    node = Node(NodeSettings.from_environment(home))
    width, height = slide_size(args.size_gpx)

    rng = random.Random(args.seed)
    kinds: dict[str, tuple[Callable[[], Place], tuple[int, int]]] = {
        "random unaligned 256x256": (
            lambda: (rng.randrange(0, width - PATCH), rng.randrange(0, height - PATCH)), (PATCH, PATCH)),
        "256x256 on the 256-px grid": (
            lambda: (rng.randrange(0, width // PATCH) * PATCH, rng.randrange(0, height // PATCH) * PATCH),
            (PATCH, PATCH)),
        f"whole {TILE}x{TILE} tiles": (
            lambda: (rng.randrange(0, width // TILE) * TILE, rng.randrange(0, height // TILE) * TILE), (TILE, TILE)),
    }
    # Every pass reads new places (the same ones for every reader): "warm" means warm file and
    # decryption caches, not the very patches read again.
    passes = {kind: [[make() for _ in range(args.regions)] for _ in range(2 + args.repeat)]
              for kind, (make, _) in kinds.items()}
    console.print(f"slide {width}x{height} = {width * height / 1e9:.2f} Gpx, {TILE}-px JPEG q70 tiles; "
                  f"{args.regions} reads per reader and pass; nproc={os.cpu_count()}; "
                  f"load average {os.getloadavg()[0]:.1f}")

    cold_results: dict[str, dict[str, float]] = {}
    for kind, (_, size) in kinds.items():  # cold: each reader alone, freshly opened, caches empty
        cold_results[kind] = {}
        for reader in readers(node, source):
            handle = reader.open()
            try:
                cold_results[kind][reader.name] = rate(lambda p, r=reader, h=handle, z=size: r.read(h, p, z),
                                                       passes[kind][0])
            finally:
                reader.close(handle)
    warm_decryption(node)
    raw_name = "libjpeg-turbo alone: frames/s (not regions)"
    unaligned = "random unaligned 256x256"
    for kind, (_, size) in kinds.items():  # warm: all readers open, taking turns on the same places
        warm_places = [place for places in passes[kind][1:-1] for place in places]
        opened = [(reader, reader.open()) for reader in readers(node, source)]
        try:
            reads = {reader.name: (lambda p, r=reader, h=handle, z=size: r.read(h, p, z)) for reader, handle in opened}
            if kind == unaligned:
                reads[raw_name], frames_per_patch = raw_decoder(node, warm_places)
            warm = interleaved(reads, warm_places)
            if kind == unaligned:
                threads = {reader.name: one_and_many_threads(reads[reader.name], passes[kind][-1], args.threads)
                           for reader, _ in opened if reader.threaded}
        finally:
            for reader, handle in opened:
                reader.close(handle)
        reference_cold = cold_results[kind]["OpenSlide read_region (RGBA PIL, source SVS)"]
        reference_warm = warm["OpenSlide read_region (RGBA PIL, source SVS)"]
        table = Table(title=f"{kind} level-0 reads, one thread (regions/s)")
        for column in ("reader", "cold", "warm", "cold vs OpenSlide", "warm vs OpenSlide"):
            table.add_column(column, justify="left" if column == "reader" else "right")
        for name, warm_rate in warm.items():
            cold_rate = cold_results[kind].get(name)
            table.add_row(name, f"{cold_rate:,.0f}" if cold_rate else "", f"{warm_rate:,.0f}",
                          f"{cold_rate / reference_cold:.2f}" if cold_rate else "",
                          f"{warm_rate / reference_warm:.2f}")
        console.print(table)
        if kind == unaligned:
            raw = warm.pop(raw_name)
            unaligned_warm = warm

    table = Table(title=f"{unaligned}, warm: 1 vs {args.threads} threads, alternating chunks "
                        f"(regions/s; nproc={os.cpu_count()})")
    for column in ("reader", "1 thread", f"{args.threads} threads", "speed-up", "CPU/wall, threads"):
        table.add_column(column, justify="left" if column == "reader" else "right")
    for name, (one, many, cpu) in threads.items():
        table.add_row(name, f"{one:,.0f}", f"{many:,.0f}", f"{many / one:.2f}", f"{cpu:.2f}")
    console.print(table)

    array = unaligned_warm["Slidebank read_region_array (RGB numpy)"]
    pil = unaligned_warm["Slidebank read_region (RGBA PIL)"]
    console.print(
        f"libjpeg-turbo alone, one core, same turns: {raw:,.0f} stored {TILE}x{TILE} frames/s; an unaligned "
        f"{PATCH}x{PATCH} patch touches {frames_per_patch:.2f} frames on average.\n"
        f"moonshot, 80% of that rate in patches/s: {0.8 * raw:,.0f}; Slidebank reached {array:,.0f} (array) and "
        f"{pil:,.0f} (RGBA PIL) patches/s = {array / raw:.0%} and {pil / raw:.0%} of the frame rate. "
        f"load average now {os.getloadavg()[0]:.1f}"
    )
    node.close()


if __name__ == "__main__":
    main()
