"""Ingest benchmark: Slidebank vs the wsidicomizer CLI vs `cp`, on one >= 1-gigapixel Aperio SVS.

The slide is built from real H&E pixels (CMU-1-Small-Region, mirrored so it tiles without seams),
cached in the work folder, and each method gets a fresh output folder.  Run from the repository root:

    .venv/bin/python bench/ingest.py [--size-gpx 1.0] [--workdir DIR] [--keep] [--repeat N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openslide
import tifffile
from PIL import Image
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SOURCE = Path("/work/shared/slides/svs/CMU-1-Small-Region.svs")
TILE = 512
QUALITY = 70
MPP = 0.499
WORKERS = 2
console = Console(width=None if sys.stdout.isatty() else 120)


def _mirrored_block(source: Path) -> np.ndarray:
    """Level 0 of `source`, cropped to multiples of 256 px and mirrored 2x2: a seamless periodic cell."""
    with openslide.OpenSlide(source) as slide:
        w, h = slide.dimensions
        rgb = np.asarray(slide.read_region((0, 0), 0, (w - w % 256, h - h % 256)).convert("RGB"))
    top = np.concatenate([rgb, rgb[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))


def _region(block: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The (w, h) window at (x, y) of the infinite plane tiled with `block`."""
    rows = np.arange(y, y + h) % block.shape[0]
    cols = np.arange(x, x + w) % block.shape[1]
    return block[rows[:, None], cols[None, :]]


def _tiles(block: np.ndarray, width: int, height: int) -> Iterator[np.ndarray]:
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            yield _region(block, x, y, TILE, TILE)


def _aperio(width: int, height: int, detail: str) -> str:
    """An Aperio ImageDescription, so OpenSlide, tifffile and opentile read the file as SVS."""
    return (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} {detail}|AppMag = 20|MPP = {MPP}"
        "|StripeWidth = 2040|ScanScope ID = SBBENCH|Filename = bench|Date = 01/02/26|Time = 10:00:00"
        f"|OriginalWidth = {width}|OriginalHeight = {height}"
    )


def build_slide(source: Path, path: Path, width: int, height: int) -> None:
    """Write the SVS tile by tile: baseline, thumbnail strip, then every /2 level down to one tile."""
    blocks = [_mirrored_block(source)]
    dims = [(width, height)]
    while max(dims[-1]) > TILE:
        blocks.append(np.asarray(Image.fromarray(blocks[-1]).reduce(2)))
        dims.append((-(-dims[-1][0] // 2), -(-dims[-1][1] // 2)))
    thumb_level = next(k for k, d in enumerate(dims) if max(d) <= 1024)
    tw, th = dims[thumb_level]
    opts = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": QUALITY},
            "metadata": None, "software": False, "maxworkers": os.cpu_count()}
    partial = path.with_name(path.name + ".partial")
    with tifffile.TiffWriter(partial, bigtiff=width * height * 4 / 3 > 3.5e9) as tif:  # <= 1 B/px at Q70
        for k, (lw, lh) in enumerate(dims):
            scaled = f"-> {lw}x{lh} " if k else ""
            tif.write(_tiles(blocks[k], lw, lh), shape=(lh, lw, 3), dtype=np.uint8, tile=(TILE, TILE),
                      description=_aperio(width, height, f"({TILE}x{TILE}) {scaled}JPEG/RGB Q={QUALITY}"), **opts)
            if k == 0:
                tif.write(_region(blocks[thumb_level], 0, 0, tw, th), rowsperstrip=th,
                          description=_aperio(width, height, f"-> {tw}x{th} - "), **opts)
    partial.replace(path)


# Runs the command and writes "seconds maxrss_kib".  A tiny wrapper process, because a child's
# ru_maxrss starts at the RSS of the process it was forked from (here, the big benchmark process).
_WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "seconds = time.perf_counter() - start\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    f.write(f'{seconds} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}')\n"
    "sys.exit(code)\n"
)


def _timed(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run `cmd` (stdout to log.out, stderr to log.err); return (seconds, peak RSS MiB) or exit on failure.

    The peak RSS is that of the largest single process in the command's tree (getrusage of children).
    """
    usage = log.with_suffix(".usage")
    with log.with_suffix(".out").open("wb") as out, log.with_suffix(".err").open("wb") as err:
        wrapped = [sys.executable, "-S", "-c", _WRAPPER, str(usage), *cmd]
        code = subprocess.call(wrapped, stdout=out, stderr=err, env=env)
    if code:
        sys.exit(f"{cmd[0]} exited {code}; see {log.with_suffix('.err')}")
    seconds, rss_kib = usage.read_text().split()
    return float(seconds), int(rss_kib) / 1024


def _tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run_slidebank(slide: Path, out: Path) -> dict[str, object]:
    """`slidebank init` (untimed) then `slidebank ingest --json` (timed) into a fresh node home."""
    env = {**os.environ, "SLIDEBANK_HOME": str(out / "home")}
    subprocess.run([str(BIN / "slidebank"), "init"], env=env, check=True, capture_output=True)
    cmd = [str(BIN / "slidebank"), "ingest", str(slide), "--workers", str(WORKERS), "--json"]
    seconds, rss = _timed(cmd, out / "ingest", env)
    outcomes = [json.loads(line) for line in (out / "ingest.out").read_text().splitlines() if line.startswith("{")]
    if [o["status"] for o in outcomes] != ["ingested"]:
        sys.exit(f"slidebank ingest did not ingest the slide: {outcomes}")
    shown = subprocess.run([str(BIN / "slidebank"), "slides", "show", outcomes[0]["slide_id"], "--json"],
                           env=env, check=True, capture_output=True, text=True)
    detail = json.loads(shown.stdout)
    note = f"{detail['provenance']['conversion']} ({detail['provenance']['source_reader']})"
    return {"seconds": seconds, "rss_mib": rss, "out_bytes": detail["canonical_size"], "note": note}


def run_wsidicomizer(slide: Path, out: Path) -> dict[str, object]:
    cmd = [str(BIN / "wsidicomizer"), "-i", str(slide), "-o", str(out / "dicom"), "--add-missing-levels",
           "--no-label", "--no-overview", "--no-confidential", "-w", str(WORKERS)]
    seconds, rss = _timed(cmd, out / "wsidicomizer")
    files = list((out / "dicom").glob("*.dcm"))
    if not files:
        sys.exit("wsidicomizer wrote no .dcm files")
    return {"seconds": seconds, "rss_mib": rss, "out_bytes": _tree_bytes(out / "dicom"), "note": f"{len(files)} files"}


def run_cp(slide: Path, out: Path) -> dict[str, object]:
    (out / "copy").mkdir()
    seconds, rss = _timed(["cp", str(slide), str(out / "copy")], out / "cp")
    return {"seconds": seconds, "rss_mib": rss, "out_bytes": _tree_bytes(out / "copy"), "note": "I/O floor"}


METHODS = {"slidebank": run_slidebank, "wsidicomizer": run_wsidicomizer, "cp": run_cp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gpx", type=float, default=1.0, help="slide size in gigapixels (default 1.0)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work", help="cache and output folder")
    parser.add_argument("--keep", action="store_true", help="keep the output folders")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the table shows the median")
    parser.add_argument("--source", type=Path, default=SOURCE, help="real slide whose pixels are replicated")
    args = parser.parse_args()
    if not args.source.is_file():
        sys.exit(f"source slide {args.source} is missing; it is needed to build the benchmark slide")
    args.workdir.mkdir(parents=True, exist_ok=True)

    width = math.ceil(math.sqrt(args.size_gpx * 1e9 * 4 / 3) / TILE) * TILE
    height = math.ceil(args.size_gpx * 1e9 / width / TILE) * TILE
    slide = args.workdir / f"{args.source.stem}-mirrored-{width}x{height}-q{QUALITY}.svs"
    build_seconds = 0.0
    if not slide.exists():
        console.print(f"building {slide} ...")
        start = time.perf_counter()
        build_slide(args.source, slide, width, height)
        build_seconds = time.perf_counter() - start
    with openslide.OpenSlide(slide) as check:
        if check.properties.get("openslide.vendor") != "aperio":
            sys.exit(f"{slide} is not read as Aperio SVS by OpenSlide")
        levels = check.level_count
    size = slide.stat().st_size
    with slide.open("rb") as f:  # every method then starts from a warm page cache
        while f.read(1 << 24):
            pass

    gpx = width * height / 1e9
    machine = {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    built = f"built in {build_seconds:.1f} s" if build_seconds else "cached"
    console.print(f"source: {slide.name}  {size / 1e6:,.1f} MB  {width}x{height} = {gpx:.3f} Gpx, "
                  f"{levels} levels ({built})")
    console.print(f"machine: nproc={machine['nproc']}  python {machine['python']}  {machine['platform']}")

    runs: dict[str, list[dict[str, object]]] = {name: [] for name in METHODS}
    runs_dir = args.workdir / "runs"
    for i in range(args.repeat):
        for name, method in METHODS.items():
            out = runs_dir / f"{name}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            console.print(f"run {i + 1}/{args.repeat}: {name} ...")
            os.sync()  # no dirty pages from the previous run get flushed on this run's clock
            runs[name].append(method(slide, out))
            console.print(f"  {runs[name][-1]['seconds']:.1f} s")
            if not args.keep:
                shutil.rmtree(out)
    if not args.keep:
        shutil.rmtree(runs_dir)

    table = Table(title=f"Ingest of one {gpx:.2f} Gpx SVS ({size / 1e6:,.0f} MB), median of {args.repeat}")
    for column in ("method", "seconds", "MB/s", "slides/min", "peak RSS MiB", "output MB", "note"):
        table.add_column(column, justify="left" if column in ("method", "note") else "right")
    median = {name: statistics.median(float(r["seconds"]) for r in rs) for name, rs in runs.items()}
    for name, rs in runs.items():
        s = median[name]
        rss = max(float(r["rss_mib"]) for r in rs)
        table.add_row(name, f"{s:.2f}", f"{size / 1e6 / s:.1f}", f"{60 / s:.2f}", f"{rss:,.0f}",
                      f"{float(rs[-1]['out_bytes']) / 1e6:,.1f}", str(rs[-1]["note"]))
    console.print(table)
    ratios = {"slidebank/wsidicomizer": median["slidebank"] / median["wsidicomizer"],
              "slidebank/cp": median["slidebank"] / median["cp"]}
    console.print("  ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()))

    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    result = results_dir / f"ingest-{dt.datetime.now():%Y-%m-%d-%H%M%S}.json"
    result.write_text(json.dumps({
        "slide": {"name": slide.name, "bytes": size, "width": width, "height": height, "levels": levels,
                  "gigapixels": gpx, "tile": TILE, "jpeg_quality": QUALITY, "build_seconds": build_seconds},
        "machine": machine, "workers": WORKERS, "repeat": args.repeat, "runs": runs,
        "median_seconds": median, "ratios": ratios,
    }, indent=2) + "\n")
    console.print(f"results: {result.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
