"""DICOMweb benchmark: Slidebank's /dicomweb vs Orthanc's DICOMweb plugin, same instances, same run.

A slide of about `--size-gpx` gigapixels (built from a real H&E region by bench/ingest.py when
../shared has it, else synthetic) is ingested into a fresh node; its stored DICOM files are exported
and uploaded to Orthanc (Debian's orthanc + orthanc-dicomweb). Then, for each server:
- WADO-RS frames/s: `wrk` with many connections asks for random single frames of every level, as
  viewers do (`multipart/related; type="image/jpeg"`), authenticated at Slidebank (Orthanc runs
  without authentication: the comparison favours it);
- QIDO-RS latency: a mix of study, series and instance searches (UIDs, patient, dates, includefield),
  one at a time, p50/p95.
Targets (issue 13): frames/s at least 5x Orthanc's, QIDO p95 below Orthanc's.

    .venv/bin/python bench/dicomweb.py [--size-gpx 0.25] [--seconds 15] [--connections 32]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pydicom
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))
from ingest import SOURCE, build_slide  # noqa: E402  (bench scripts are not a package)
from orthanc import running_orthanc  # noqa: E402
from tiles import free_port, load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
JPEG = 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'


def frame_paths(prefix: str, headers: list[pydicom.Dataset], count: int, seed: int = 3) -> list[str]:
    """Random single frames, each level (instance) equally often."""
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        dataset = headers[index % len(headers)]
        frame = rng.randint(1, int(dataset.NumberOfFrames))
        paths.append(f"{prefix}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
                     f"/instances/{dataset.SOPInstanceUID}/frames/{frame}")
    return paths


def qido_queries(headers: list[pydicom.Dataset]) -> list[str]:
    first = headers[0]
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID
    return [
        "/studies",
        f"/studies?StudyInstanceUID={study}",
        f"/studies?PatientID={first.PatientID}",
        f"/studies?StudyDate={first.StudyDate}-&ModalitiesInStudy=SM",
        f"/studies/{study}/series",
        "/series?Modality=SM",
        f"/studies/{study}/series/{series}/instances?includefield=00083002",
        f"/studies/{study}/instances?SOPClassUID={first.SOPClassUID}",
        f"/instances?SOPInstanceUID={headers[-1].SOPInstanceUID}",
    ]


def qido_latency(base: str, queries: list[str], rounds: int, auth: dict[str, str]) -> dict[str, float]:
    times = []
    with httpx.Client(headers={**auth, "Accept": "application/dicom+json"}, timeout=30) as client:
        for query in queries:  # warm up
            client.get(base + query).raise_for_status()
        for _ in range(rounds):
            for query in queries:
                started = time.perf_counter()
                client.get(base + query).raise_for_status()
                times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50": statistics.median(times), "p95": times[int(len(times) * 0.95) - 1], "n": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gpx", type=float, default=0.25)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="Slidebank server processes")
    parser.add_argument("--qido-rounds", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work")
    args = parser.parse_args()
    console = Console()
    height = math.ceil(math.sqrt(args.size_gpx * 1e9 * 0.75) / 512) * 512
    width = math.ceil(args.size_gpx * 1e9 / height / 512) * 512
    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = args.workdir / f"dicomweb-bench-{width}x{height}.svs"
    if not slide.exists():
        console.print(f"building a {width}x{height} slide …")
        if SOURCE.is_file():
            build_slide(SOURCE, slide, width, height)
        else:
            from slidebank.synth import write_synthetic_slide

            write_synthetic_slide(slide, width, height, vendor="aperio", seed=11)

    with tempfile.TemporaryDirectory(dir=args.workdir) as temporary:
        work = Path(temporary)
        env = {**os.environ, "SLIDEBANK_HOME": str(work / "node")}
        subprocess.run([str(BIN / "slidebank"), "init"], env=env, check=True, capture_output=True)
        subprocess.run([str(BIN / "slidebank"), "ingest", str(slide), "--json", "--no-qc"], env=env, check=True,
                       capture_output=True)
        token = subprocess.run([str(BIN / "slidebank"), "tokens", "create", "admin"], env=env, check=True,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1]
        auth = {"Authorization": f"Bearer {token}"}
        exported = subprocess.run(
            [str(BIN / "python"), "-c",
             "import sys; from pathlib import Path; from slidebank.node import Node; "
             "from slidebank.slides.stored import export_volumes; n = Node.open(); "
             "[print(p) for s in n.catalog.list_slides() for p in "
             "export_volumes(n.volume_files(s['slide_id']), n.open_blob, s['slide_id'], Path(sys.argv[1]))]",
             str(work / "exported")], env=env, check=True, capture_output=True, text=True).stdout.split()
        files = [Path(p) for p in exported]
        headers = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in files),
                         key=lambda d: -int(d.TotalPixelMatrixColumns))
        frames = sum(int(d.NumberOfFrames) for d in headers)
        console.print(f"{width}x{height} px, {len(files)} instances, {frames} frames; "
                      f"{args.connections} connections, {args.seconds} s each, {os.cpu_count()} cores")
        results: dict[str, dict[str, float]] = {}
        port = free_port()
        process = subprocess.Popen([str(BIN / "slidebank"), "serve", "--port", str(port), "--workers",
                                    str(args.workers)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            paths_file = work / "slidebank-paths.txt"
            paths_file.write_text("\n".join(frame_paths("/dicomweb", headers, 20000)) + "\n")
            results["Slidebank"] = load(port, paths_file, args.seconds, args.connections, work,
                                        {**auth, "Accept": JPEG})
            results["Slidebank"].update(qido_latency(f"{base}/dicomweb", qido_queries(headers), args.qido_rounds, auth))
        finally:
            process.terminate()
            process.wait(timeout=20)
        with running_orthanc(threads=max(8, args.connections)) as orthanc:
            orthanc.store(files)
            orthanc_port = int(re.search(r":(\d+)$", orthanc.base).group(1))  # type: ignore[union-attr]
            paths_file = work / "orthanc-paths.txt"
            paths_file.write_text("\n".join(frame_paths("/dicom-web", headers, 20000)) + "\n")
            results["Orthanc"] = load(orthanc_port, paths_file, args.seconds, args.connections, work, {"Accept": JPEG})
            results["Orthanc"].update(qido_latency(orthanc.dicomweb, qido_queries(headers), args.qido_rounds, {}))

    table = Table(title="DICOMweb: WADO-RS frames and QIDO-RS searches, same instances")
    for column in ("server", "frames/s", "frame p50 ms", "frame p99 ms", "non-2xx", "QIDO p50 ms", "QIDO p95 ms"):
        table.add_column(column, justify="right")
    for name, r in results.items():
        table.add_row(name, f"{r['tiles_per_s']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", str(int(r["errors"])),
                      f"{r['p50']:.1f}", f"{r['p95']:.1f}")
    console.print(table)
    ours, theirs = results["Slidebank"], results["Orthanc"]
    console.print(f"frames/s Slidebank / Orthanc: {ours['tiles_per_s'] / theirs['tiles_per_s']:.1f}x (target >= 5x); "
                  f"QIDO p95 Slidebank / Orthanc: {ours['p95'] / theirs['p95']:.2f} (target < 1)")


if __name__ == "__main__":
    main()
