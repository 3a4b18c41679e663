"""Patch-dataset benchmark: patches/s into a PyTorch DataLoader with 2 workers, Slidebank's
PatchDataset (through the SDK, from `slidebank serve` on this machine) vs the usual way: OpenSlide
`read_region` inside a Dataset on the original file, as MONAI's and TIAToolbox's readers do.

The slide of bench/regions.py (1 Gpx of real H&E pixels, 512-px JPEG tiles). Both datasets read the
same 224x224 level-0 patches, give (uint8 tensor 3x224x224, label), batches of 32, 2 workers each:
seeded random places (training), and a grid in reading order over a band of the slide (inference,
export: neighbouring patches share stored frames; the OpenSlide Dataset is given the same order).
The two loaders take turns, twice per kind, and the best pass of each is reported. The server
shares the 2 cores with the loaders, as it would not in production: compare within one run.

Run from the repository root:  .venv/bin/python bench/patches.py [--patches 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regions import SLIDE_ID  # noqa: E402  (bench scripts are not a package)
from sdk import served_slide, stop_server  # noqa: E402
from slidebank.client import Client  # noqa: E402
from slidebank.patches import PatchDataset, Sampling  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = 224
console = Console(width=None if sys.stdout.isatty() else 132)


class OpenSlidePatches(Dataset):
    """The usual way: a Dataset of (x, y) places, OpenSlide opened once per worker, RGBA -> RGB."""

    def __init__(self, path: Path, places: list[tuple[int, int]]) -> None:
        self.path, self.places = path, places
        self._slide: Any = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.places)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._pid != os.getpid():
            self._slide, self._pid = openslide.OpenSlide(str(self.path)), os.getpid()
        region = self._slide.read_region(self.places[index], 0, (SIZE, SIZE)).convert("RGB")
        return torch.from_numpy(np.asarray(region).transpose(2, 0, 1).copy()), 0


def rate(dataset: Dataset) -> float:
    loader = DataLoader(dataset, batch_size=32, num_workers=2, shuffle=False, persistent_workers=False)
    start = time.perf_counter()
    count = sum(len(labels) for _, labels in loader)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gpx", type=float, default=1.0)
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work")
    args = parser.parse_args()
    source, token, server, base = served_slide(args.workdir, args.size_gpx, 2)
    results: dict[tuple[str, str], list[float]] = {}
    try:
        with Client(base, token, progress=False) as bank:
            random_passes = [PatchDataset(bank, [SLIDE_ID], Sampling(size=SIZE, level=0, random=args.patches,
                                                                     seed=args.seed + i, tissue=None)) for i in range(2)]
            grid = PatchDataset(bank, [SLIDE_ID], Sampling(size=SIZE, level=0, tissue=None))
        columns = sum(1 for p in grid.patches if p.y == 0)
        whole_grid = list(grid.patches)
        for kind, passes in (("random", random_passes), ("grid", [grid, grid])):
            for number, data in enumerate(passes):  # new places each random pass; the same for both readers
                if kind == "grid":  # a band of whole rows, a different one each pass
                    rows = max(1, args.patches // columns)
                    data.patches = whole_grid[number * rows * columns:(number + 1) * rows * columns]
                    data.labels = [None] * len(data.patches)
                places = [(p.x, p.y) for p in data.patches]
                results.setdefault((kind, "openslide"), []).append(rate(OpenSlidePatches(source, places)))
                results.setdefault((kind, "slidebank"), []).append(rate(data))
    finally:
        stop_server(server)
    best = {key: max(values) for key, values in results.items()}
    table = Table(title=f"{SIZE}x{SIZE} level-0 patches into a DataLoader, 2 workers, batches of 32 (nproc={os.cpu_count()})")
    for column in ("places", "dataset", "patches/s (best of 2)", "passes", "ratio"):
        table.add_column(column, justify="left" if column in ("places", "dataset") else "right")
    for kind in ("random", "grid"):
        peer = best[(kind, "openslide")]
        for reader, name in (("openslide", "OpenSlide read_region in a Dataset (MONAI/TIAToolbox way)"),
                             ("slidebank", "Slidebank PatchDataset over loopback (SDK)")):
            table.add_row(kind, name, f"{best[(kind, reader)]:,.0f}",
                          ", ".join(f"{v:,.0f}" for v in results[(kind, reader)]), f"{best[(kind, reader)] / peer:.2f}x")
    console.print(table)
    print(json.dumps({f"{kind} {reader}": round(value, 1) for (kind, reader), value in best.items()}))


if __name__ == "__main__":
    main()
