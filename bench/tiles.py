"""Tile-serving benchmark: Slidebank Deep Zoom vs an OpenSlide Deep Zoom server vs nginx static files.

One >= 1-gigapixel slide built from real H&E pixels (bench/ingest.py builds and caches it) is
ingested into a fresh node; the three servers then answer the same list of random Deep Zoom tile
paths across levels, loaded by `wrk` with many concurrent connections. nginx serves those very
tiles, fetched once from Slidebank and written as files: the practical limit. Where Ceph's
radosgw is installed (the tests' S3 server), a second node keeps its blobs in an S3 bucket and is
loaded the same way: tiles/s from S3 against local disk. Run from the repository root (needs wrk
and nginx from Debian; `make bench-deps` installs them):

    .venv/bin/python bench/tiles.py [--size-gpx 1.0] [--seconds 20] [--connections 64] [--workers N]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from ingest import SOURCE, build_slide  # noqa: E402  (bench scripts are not a package)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from radosgw import RadosgwUnavailable, S3Server, radosgw_server  # noqa: E402  (the tests' S3 server)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SLIDE_ID = "bench-slide"
WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("TILE_PATHS")) do paths[#paths + 1] = line end
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter * 7919) % #paths + 1])
end
"""
NGINX_CONF = """
worker_processes {workers};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=100000 inactive=60s;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
  uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  types {{ image/jpeg jpeg; }}
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (servers fork workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(match.group(1)) if match else 0
    return total / 1024


@contextmanager
def server(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(command, env={**os.environ, **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/slides/{SLIDE_ID}.dzi", timeout=2)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start") from None
                time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=20)


def node_with_slide(slide: Path, env: dict[str, str]) -> dict[str, str]:
    """A fresh node holding the slide; the administrator's authorisation header."""
    full = {**os.environ, **env}
    subprocess.run([str(BIN / "slidebank"), "init"], env=full, check=True, capture_output=True)
    subprocess.run([str(BIN / "slidebank"), "ingest", str(slide), "--slide-id", SLIDE_ID, "--json"],
                   env=full, check=True, capture_output=True)
    token = subprocess.run([str(BIN / "slidebank"), "tokens", "create", "admin"], env=full,
                           check=True, capture_output=True, text=True).stdout.strip()
    return {"Authorization": f"Bearer {token}"}  # every tile request is authenticated and checked


def s3_server(stack: contextlib.ExitStack, console: Console) -> S3Server | None:
    """The tests' S3 server (Ceph's radosgw), or None where Ceph is not installed."""
    try:
        return stack.enter_context(radosgw_server())
    except RadosgwUnavailable as reason:
        console.print(f"no S3 run: {reason}")
        return None


def tile_paths(width: int, height: int, tile: int, count: int, seed: int = 1) -> list[str]:
    """Random tiles over the levels a pathologist pans at (the 6 finest), each level equally often."""
    rng = random.Random(seed)
    top = math.ceil(math.log2(max(width, height)))
    paths = []
    for index in range(count):
        level = top - index % 6
        scale = 2 ** (top - level)
        cols, rows = math.ceil(math.ceil(width / scale) / tile), math.ceil(math.ceil(height / scale) / tile)
        paths.append(f"/slides/{SLIDE_ID}_files/{level}/{rng.randrange(cols)}_{rng.randrange(rows)}.jpeg")
    return paths


def load(port: int, paths_file: Path, seconds: int, connections: int, work: Path,
         headers: dict[str, str]) -> dict[str, float]:
    script = work / "paths.lua"
    script.write_text(WRK_SCRIPT)
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *header_args, "-s", str(script),
               f"http://127.0.0.1:{port}"]
    env = {**os.environ, "TILE_PATHS": str(paths_file)}
    warm_up = [part if not part.startswith("-d") else "-d3s" for part in command]
    subprocess.run(warm_up, env=env, capture_output=True, check=True)
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "tiles_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "errors": int(errors.group(1)) if errors else 0,
    }


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gpx", type=float, default=1.0)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="server processes (per core)")
    parser.add_argument("--paths", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is not installed: run `make bench` (it installs wrk and nginx from Debian)")
    if not SOURCE.is_file():
        sys.exit(f"needs the real slide {SOURCE} to build the benchmark slide from")

    console = Console()
    height = math.ceil(math.sqrt(args.size_gpx * 1e9 * 0.75) / 512) * 512  # 4:3, whole 512-px tiles
    width = math.ceil(args.size_gpx * 1e9 / height / 512) * 512
    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = args.workdir / f"tiles-bench-{width}x{height}.svs"
    if not slide.exists():
        console.print(f"building {width}x{height} slide from {SOURCE.name} …")
        build_slide(SOURCE, slide, width, height)

    with tempfile.TemporaryDirectory(dir=args.workdir) as temporary, contextlib.ExitStack() as stack:
        work = Path(temporary)
        work.chmod(0o755)  # nginx workers run as www-data and must reach the static tiles
        env = {"SLIDEBANK_HOME": str(work / "node")}
        auth = node_with_slide(slide, env)
        results: dict[str, dict[str, float]] = {}
        port = free_port()
        with server([str(BIN / "slidebank"), "serve", "--port", str(port), "--workers", str(args.workers)],
                    port, env) as process:
            dzi = httpx.get(f"http://127.0.0.1:{port}/slides/{SLIDE_ID}.dzi", headers=auth).text
            tile = int(re.search(r'TileSize="(\d+)"', dzi).group(1))  # type: ignore[union-attr]
            paths = tile_paths(width, height, tile, args.paths)
            paths_file = work / "paths.txt"
            paths_file.write_text("\n".join(paths) + "\n")
            console.print(f"{len(set(paths))} distinct tiles of {tile} px over 6 levels; "
                          f"{args.connections} connections, {args.seconds} s each")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth) as client:  # nginx's copy
                for path in sorted(set(paths)):
                    target = work / "static" / path.lstrip("/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(client.get(path).raise_for_status().content)
            results["slidebank"] = load(port, paths_file, args.seconds, args.connections, work, auth)
            results["slidebank"]["rss_mib"] = tree_rss_mib(process.pid)

        s3 = s3_server(stack, console)
        if s3 is not None:
            s3_env = {**s3.environment(), "SLIDEBANK_HOME": str(work / "node-s3"),
                      "SLIDEBANK_STORE_URL": "s3://bench/tiles"}
            s3_auth = node_with_slide(slide, s3_env)
            port = free_port()
            with server([str(BIN / "slidebank"), "serve", "--port", str(port), "--workers", str(args.workers)],
                        port, s3_env) as process:
                results["slidebank (S3)"] = load(port, paths_file, args.seconds, args.connections, work, s3_auth)
                results["slidebank (S3)"]["rss_mib"] = tree_rss_mib(process.pid)

        port = free_port()
        gunicorn = [str(BIN / "gunicorn"), "-w", str(args.workers), "-b", f"127.0.0.1:{port}",
                    "--chdir", str(ROOT / "bench"), "openslide_dz_server:app"]
        with server(gunicorn, port, {"SLIDE": str(slide), "TILE_SIZE": str(tile)}) as process:
            results["openslide"] = load(port, paths_file, args.seconds, args.connections, work, {})
            results["openslide"]["rss_mib"] = tree_rss_mib(process.pid)

        port = free_port()
        (work / "tmp").mkdir()
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=args.workers, work=work, port=port, root=work / "static"))
        (work / "static" / "slides" / f"{SLIDE_ID}.dzi").write_text(dzi)  # what the readiness probe asks for
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        with server([nginx, "-c", str(conf), "-g", "daemon off;"], port) as process:
            results["nginx"] = load(port, paths_file, args.seconds, args.connections, work, {})
            results["nginx"]["rss_mib"] = tree_rss_mib(process.pid)

    table = Table(title=f"Deep Zoom tiles, {width}x{height} ({width * height / 1e9:.2f} Gpx), "
                        f"{args.workers} server processes, {os.cpu_count()} cores")
    for column in ("server", "tiles/s", "p50 ms", "p99 ms", "non-2xx", "server RSS MiB"):
        table.add_column(column, justify="right")
    for name, result in results.items():
        table.add_row(name, f"{result['tiles_per_s']:.0f}", f"{result['p50_ms']:.1f}", f"{result['p99_ms']:.1f}",
                      str(result["errors"]), f"{result['rss_mib']:.0f}")
    console.print(table)
    speedup = results["slidebank"]["tiles_per_s"] / results["openslide"]["tiles_per_s"]
    gap = results["nginx"]["tiles_per_s"] / results["slidebank"]["tiles_per_s"]
    console.print(f"Slidebank / OpenSlide server: {speedup:.1f}x   (target >= 10x)")
    console.print(f"nginx / Slidebank: {gap:.2f}x   (target <= 3x)")
    if "slidebank (S3)" in results:
        console.print(f"Slidebank from S3 / from local disk: "
                      f"{results['slidebank (S3)']['tiles_per_s'] / results['slidebank']['tiles_per_s']:.2f}x")
    out = ROOT / "bench" / "results" / f"tiles-{dt.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"slide": [width, height], "workers": args.workers, "cores": os.cpu_count(),
                               "python": platform.python_version(), "results": results,
                               "slidebank_over_openslide": speedup, "nginx_over_slidebank": gap}, indent=2))
    console.print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
