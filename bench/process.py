"""Processing benchmark: QC of a >= 1-gigapixel slide, tile reads inside algorithms, Dask scaling.

1. QC of one slide: `slidebank run qc --wait` (a Dask job reading the encrypted, stored DICOM through
   Slidebank's reader) next to a plain OpenSlide script doing the same computation on the source
   SVS (same detectors, same levels, same tiles), in one process.
2. Tile reads as an algorithm does them: 256x256 level-0 regions at the same random places, through
   Slidebank's `SlideReader` (decrypting), OpenSlide `read_region` and tiffslide `read_region`.
3. Dask scaling: QC of a dataset of several slides on 1 and on 2 worker processes.

The slides are built from real H&E pixels (CMU-1-Small-Region, see bench/ingest.py) and cached.
Run from the repository root:  .venv/bin/python bench/process.py [--size-gpx 1.0] [--dataset-slides 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import openslide
import tiffslide
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import SOURCE, TILE, build_slide  # noqa: E402  (the same benchmark slide as the ingest bench)
from slidebank.algorithms.builtin import QC  # noqa: E402
from slidebank.algorithms.reader import SlideReader  # noqa: E402
from slidebank.node import Node, NodeSettings  # noqa: E402
from slidebank.qc import detectors  # noqa: E402
from slidebank.slides.stored import open_stored_slide  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
console = Console(width=None if sys.stdout.isatty() else 120)
PARAMS = {p.name: p.default for p in QC.parameters}


def slide_size(gpx: float) -> tuple[int, int]:
    width = math.ceil(math.sqrt(gpx * 1e9 * 4 / 3) / TILE) * TILE
    return width, math.ceil(gpx * 1e9 / width / TILE) * TILE


def cached_slide(workdir: Path, gpx: float) -> Path:
    width, height = slide_size(gpx)
    path = workdir / f"{SOURCE.stem}-mirrored-{width}x{height}-q70.svs"
    if not path.exists():
        console.print(f"building {path.name} ...")
        build_slide(SOURCE, path, width, height)
    return path


def cli(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([str(BIN / "slidebank"), *args], capture_output=True, text=True,
                            env={**os.environ, "SLIDEBANK_HOME": str(home), **(env or {})}, check=False)
    if result.returncode != 0:
        sys.exit(f"slidebank {' '.join(args)} failed:\n{result.stderr}")
    return time.perf_counter() - start, result.stdout


def openslide_qc(path: Path) -> dict[str, float]:
    """The QC computation written against OpenSlide directly: overview, masks, focus on tissue tiles."""
    with openslide.OpenSlide(str(path)) as slide:
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
        downsamples = [round(d) for d in slide.level_downsamples]

        def level_for(target: float) -> int:
            return max((k for k, d in enumerate(downsamples) if mpp * d <= target * (1 + 1e-6)), default=0)

        overview_level = level_for(PARAMS["overview_mpp"])
        size = slide.level_dimensions[overview_level]
        overview = np.asarray(slide.read_region((0, 0), overview_level, size).convert("RGB"))
        tissue = detectors.tissue_mask(overview) & ~detectors.pen_mask(overview)
        level = level_for(PARAMS["focus_mpp"])
        scale = downsamples[level]
        width, height = slide.level_dimensions[level]
        tile = PARAMS["tile_size"]
        variances = []
        rows, columns = tissue.shape
        for ty in range(0, height, tile):
            for tx in range(0, width, tile):
                x0, y0 = tx * scale, ty * scale
                x1, y1 = min(x0 + tile * scale, slide.dimensions[0]), min(y0 + tile * scale, slide.dimensions[1])
                window = tissue[int(y0 * rows / slide.dimensions[1]):max(math.ceil(y1 * rows / slide.dimensions[1]), 1),
                                int(x0 * columns / slide.dimensions[0]):max(math.ceil(x1 * columns / slide.dimensions[0]), 1)]
                if not window.size or window.mean() < 0.5:
                    continue
                w, h = min(tile, width - tx), min(tile, height - ty)
                pixels = np.asarray(slide.read_region((x0, y0), level, (w, h)).convert("RGB"))
                variances.append(detectors.laplacian_variance(pixels))
    blurred = sum(v < PARAMS["blur_threshold"] for v in variances)
    omp = mpp * downsamples[overview_level]
    return {"tissue_area_mm2": float(tissue.sum()) * omp * omp / 1e6, "focus_tiles": len(variances),
            "blur_fraction": blurred / len(variances) if variances else 0.0}


def tile_reads(node: Node, slide_id: str, source: Path, count: int) -> dict[str, float]:
    """Tiles per second for the same `count` random 256x256 level-0 reads through each reader."""
    rng = random.Random(7)
    with openslide.OpenSlide(str(source)) as probe:
        width, height = probe.dimensions
    places = [(rng.randrange(0, width - 256), rng.randrange(0, height - 256)) for _ in range(count)]
    rates = {}
    with open_stored_slide(node.catalog, node.open_blob, slide_id) as slide:
        reader = SlideReader(slide, slide_id)
        start = time.perf_counter()
        for x, y in places:
            reader.read(0, x, y, 256, 256)
        rates["Slidebank SlideReader (decrypting)"] = count / (time.perf_counter() - start)
    with openslide.OpenSlide(str(source)) as slide:
        start = time.perf_counter()
        for x, y in places:
            np.asarray(slide.read_region((x, y), 0, (256, 256)).convert("RGB"))
        rates["OpenSlide read_region"] = count / (time.perf_counter() - start)
    with tiffslide.TiffSlide(str(source)) as slide:
        start = time.perf_counter()
        for x, y in places:
            np.asarray(slide.read_region((x, y), 0, (256, 256)).convert("RGB"))
        rates["tiffslide read_region"] = count / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gpx", type=float, default=1.0, help="QC slide size in gigapixels")
    parser.add_argument("--dataset-slides", type=int, default=4, help="slides in the Dask scaling dataset")
    parser.add_argument("--dataset-gpx", type=float, default=0.25, help="size of each dataset slide")
    parser.add_argument("--tiles", type=int, default=2000, help="tile reads per reader")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work")
    args = parser.parse_args()
    if not SOURCE.is_file():
        sys.exit(f"source slide {SOURCE} is missing; it is needed to build the benchmark slides")
    args.workdir.mkdir(parents=True, exist_ok=True)
    big = cached_slide(args.workdir, args.size_gpx)
    dataset = [cached_slide(args.workdir, args.dataset_gpx * (1 + 0.01 * k)) for k in range(args.dataset_slides)]
    home = args.workdir / "process-node"
    shutil.rmtree(home, ignore_errors=True)
    cli(home, "init")
    cli(home, "ingest", str(big), "--slide-id", "big", "--no-qc")
    cli(home, "datasets", "create", "scaling", "--policy", "bench", "--duo", "DUO:0000004")
    cli(home, "ingest", *map(str, dataset), "--dataset", "scaling", "--no-qc", "--workers", "2")
    processes = {"SLIDEBANK_DASK_PROCESSES": "1"}

    # 1. QC of one big slide.
    width, height = slide_size(args.size_gpx)
    wall, out = cli(home, "run", "qc", "--slide", "big", "--wait", "--json", env={**processes, "SLIDEBANK_DASK_WORKERS": "1"})
    job = json.loads(out)
    [task] = job["tasks"]
    start = time.perf_counter()
    reference = openslide_qc(big)
    reference_seconds = time.perf_counter() - start
    values = task["summary"]["values"]
    table = Table(title=f"QC of a {width}x{height} = {width * height / 1e9:.2f} Gpx slide")
    for column in ("method", "seconds", "vs OpenSlide", "tissue mm²", "focus tiles", "blur fraction"):
        table.add_column(column)
    table.add_row("OpenSlide reference (one process)", f"{reference_seconds:.1f}", "1.00",
                  f"{reference['tissue_area_mm2']:.1f}", str(reference["focus_tiles"]), f"{reference['blur_fraction']:.3f}")
    table.add_row("Slidebank QC task (Dask worker)", f"{task['seconds']:.1f}", f"{reference_seconds / task['seconds']:.2f}",
                  f"{values['qc.tissue_area_mm2']:.1f}", f"{values['qc.focus_tiles']:.0f}", f"{values['qc.blur_fraction']:.3f}")
    table.add_row("slidebank run qc --wait (incl. cluster start)", f"{wall:.1f}", f"{reference_seconds / wall:.2f}", "", "", "")
    console.print(table)

    # 2. Tile reads.
    node = Node(NodeSettings.from_environment(home))
    rates = tile_reads(node, "big", big, args.tiles)
    node.close()
    table = Table(title=f"{args.tiles} random 256x256 level-0 reads")
    for column in ("reader", "tiles/s", "vs OpenSlide"):
        table.add_column(column)
    for name, rate in rates.items():
        table.add_row(name, f"{rate:,.0f}", f"{rate / rates['OpenSlide read_region']:.2f}")
    console.print(table)

    # 3. Dask scaling: the job's own span (claimed → finished) excludes starting the cluster.
    table = Table(title=f"QC of {args.dataset_slides} slides of {args.dataset_gpx} Gpx on Dask worker processes")
    for column in ("workers", "job seconds", "speed-up", "wall incl. cluster start", "sum of task seconds"):
        table.add_column(column)
    spans = {}
    for workers in (1, 2):
        wall, out = cli(home, "run", "qc", "--dataset", "scaling", "--wait", "--json",
                        env={**processes, "SLIDEBANK_DASK_WORKERS": str(workers)})
        job = json.loads(out)
        spans[workers] = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
        table.add_row(str(workers), f"{spans[workers]:.1f}", f"{spans[1] / spans[workers]:.2f}", f"{wall:.1f}",
                      f"{sum(t['seconds'] for t in job['tasks']):.1f}")
    console.print(table)
    console.print(f"machine: nproc={os.cpu_count()}")


if __name__ == "__main__":
    main()
