"""Annotation benchmark: 300,000 nucleus polygons on one slide (a whole-slide segmentation).

Times the import, viewport queries as a pathologist pans at 40x (a 2000x1100-pixel window) and
zoomed out (density grid over the whole slide), next to SQLite's own R*Tree spatial index on the
same boxes plus fetching the same rows as JSON (the peer), checking both return the same features. Run from the repository root:

    .venv/bin/python bench/annotations.py [--features 300000] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from slidebank.access.principal import operator
from slidebank.annotations.geojson import parse_document
from slidebank.annotations.service import Viewport
from slidebank.node import Node, NodeSettings

ROOT = Path(__file__).resolve().parent.parent
console = Console(width=None if sys.stdout.isatty() else 120)
WIDTH, HEIGHT = 100_000, 80_000  # a 40x resection slide


def nuclei(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    features = []
    for _ in range(count):
        x, y, r = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(4, 12)
        ring = [[round(x + r * math.cos(a * math.pi / 4), 1), round(y + r * math.sin(a * math.pi / 4), 1)]
                for a in range(8)]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
                         "properties": {"objectType": "detection",
                                        "classification": {"name": rng.choice(["Tumor", "Immune cells", "Stroma"])}}})
    for k in range(5):  # a few tissue outlines spanning much of the slide
        x0, y0 = k * 15_000, k * 10_000
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[
            [x0, y0], [x0 + 60_000, y0], [x0 + 60_000, y0 + 50_000], [x0, y0 + 50_000], [x0, y0]]]},
            "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}}})
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=300_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work")
    args = parser.parse_args()
    home = args.workdir / "annotations-node"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    from slidebank.synth import write_synthetic_slide

    slide = write_synthetic_slide(args.workdir / "annotations-slide.svs", 2048, 2048, seed=1)
    import subprocess

    subprocess.run([str(Path(sys.executable).with_name("slidebank")), "ingest", str(slide.path), "--slide-id", "s",
                    "--no-qc", "--home", str(home)], check=True, capture_output=True)
    node = Node(NodeSettings(home=home, database_url=f"sqlite:///{home / 'catalog.sqlite'}"))
    features = nuclei(args.features, seed=3)
    start = time.perf_counter()
    parsed = parse_document(features)
    ids = node.annotations.add("s", parsed, operator(), "bench")
    import_seconds = time.perf_counter() - start

    # The peer: SQLite's R*Tree module over the same bounding boxes, in memory.
    rtree = sqlite3.connect(":memory:")
    rtree.execute("CREATE VIRTUAL TABLE boxes USING rtree(id, min_x, max_x, min_y, max_y)")
    rtree.executemany("INSERT INTO boxes VALUES (?, ?, ?, ?, ?)",
                      [(k, f.bounds[0], f.bounds[2], f.bounds[1], f.bounds[3]) for k, f in enumerate(parsed)])
    rng = random.Random(11)
    windows = []
    for _ in range(args.queries):
        x, y = rng.uniform(0, WIDTH - 2000), rng.uniform(0, HEIGHT - 1100)
        windows.append(Viewport(x, y, x + 2000, y + 1100))
    catalog = sqlite3.connect(home / "catalog.sqlite")
    ours, peer, counts = [], [], []
    for window in windows:
        start = time.perf_counter()
        found, total = node.annotations.query("s", window, limit=50_000)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        rows = rtree.execute("SELECT id FROM boxes WHERE max_x >= ? AND min_x <= ? AND max_y >= ? AND min_y <= ?",
                             (window.x0, window.x1, window.y0, window.y1)).fetchall()
        wanted = [ids[row[0]] for row in rows]
        fetched = catalog.execute(f"SELECT uuid, geometry, properties FROM annotation_features WHERE uuid IN "
                                  f"({','.join('?' * len(wanted))})", wanted).fetchall()
        features = [{"id": u, "geometry": json.loads(g), "properties": json.loads(p)} for u, g, p in fetched]
        peer.append(time.perf_counter() - start)
        assert {f["id"] for f in found} == {f["id"] for f in features}, "index and R*Tree disagree"
        counts.append(total)
    start = time.perf_counter()
    node.annotations.density("s", Viewport(0, 0, WIDTH, HEIGHT), 128, 102)
    density_seconds = time.perf_counter() - start
    node.close()

    table = Table(title=f"{len(parsed):,} features on one slide")
    for column in ("operation", "Slidebank", "SQLite R*Tree + row fetch (peer)", "ratio"):
        table.add_column(column)
    table.add_row("import (parse + insert)", f"{import_seconds:.1f} s ({len(parsed) / import_seconds:,.0f}/s)", "", "")
    median_ours, median_peer = statistics.median(ours) * 1e3, statistics.median(peer) * 1e3
    table.add_row(f"viewport 2000x1100 (median of {len(windows)}, ~{statistics.median(counts):.0f} features)",
                  f"{median_ours:.1f} ms", f"{median_peer:.1f} ms", f"{median_ours / median_peer:.1f}x")
    p95 = sorted(ours)[int(len(ours) * 0.95)] * 1e3
    table.add_row("viewport p95 (features as GeoJSON)", f"{p95:.1f} ms", "", "")
    table.add_row("density grid 128x102, whole slide", f"{density_seconds * 1e3:.0f} ms", "", "")
    console.print(table)


if __name__ == "__main__":
    main()
