"""`slidebank` command line: a thin layer over the services, for stewards, operators and scripts.

Every command that prints data has `--json` with a stable shape; human output uses Rich.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional, cast

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from slidebank import __version__
from slidebank.cli.annotations import annotations_app
from slidebank.cli.common import (
    HomeOption,
    JsonOption,
    console,
    fail,
    open_node,
    opened_node,
    print_json,
)
from slidebank.cli.governance import register_governance_commands
from slidebank.cli.jobs import register_job_commands, run_queued_qc

app = typer.Typer(help="Slidebank: collect, describe and share whole-slide images.", no_args_is_help=True)
slides_app = typer.Typer(help="List and inspect stored slides.", no_args_is_help=True)
app.add_typer(slides_app, name="slides")
app.add_typer(annotations_app, name="annotations")
register_governance_commands(app)
register_job_commands(app)

@app.command()
def version() -> None:
    """Print the Slidebank version."""
    typer.echo(__version__)


@app.command()
def init(home: HomeOption = None) -> None:
    """Create (or upgrade) an embedded node: catalog schema, blob store and node key."""
    import secrets

    from slidebank.access.principal import operator

    node = open_node(home)
    _ = node.secret
    console.print(f"Slidebank node ready in [bold]{node.settings.home}[/bold]")
    if not node.identities.has_users():  # a fresh node: its first administrator
        password = secrets.token_urlsafe(12)
        node.identities.add_user(operator(), "admin", "administrator", password=password)
        console.print(f"Administrator [bold]admin[/bold], password [bold]{password}[/bold] (shown once). "
                      "For an API token: [bold]slidebank tokens create admin[/bold]")
    node.close()


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Slide files or folders (searched recursively).")],
    dataset: Annotated[Optional[str], typer.Option(help="Dataset to put the slides in.")] = None,
    metadata: Annotated[Optional[Path], typer.Option(help="Sidecar CSV/JSON describing the slides.")] = None,
    slide_id: Annotated[Optional[str], typer.Option("--slide-id", help="Keep your own id (one slide only).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    mpp: Annotated[Optional[float], typer.Option(
        "--mpp", help="Pixel size in µm/px for slides whose file does not say (a sidecar mpp column wins).")] = None,
    qc: Annotated[bool, typer.Option(help="Run quality control on the new slides (a Dask job).")] = True,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Validate, de-identify, convert to DICOM WSI, store, catalog and quality-control slides.
    Exit 1 if any slide was rejected."""
    from dataclasses import replace

    from slidebank.ingest.pipeline import with_default_mpp
    from slidebank.ingest.runner import IngestUsageError, plan_ingest, run_ingest
    from slidebank.ingest.sidecar import SidecarError, parse_mpp

    try:
        default_mpp = parse_mpp(mpp) if mpp is not None else None
    except ValueError as error:
        fail(f"--{error}")
    try:
        plan = plan_ingest(paths, dataset=dataset, sidecar=metadata, slide_id=slide_id)
    except (FileNotFoundError, IngestUsageError, SidecarError) as error:
        fail(str(error))
    plan = replace(plan, requests=tuple(with_default_mpp(r, default_mpp) for r in plan.requests))
    node = open_node(home)
    if as_json:
        outcomes = run_ingest(node, plan, workers=workers, on_outcome=lambda o: print_json(o.to_json()))
    else:
        outcomes = _ingest_with_progress(node, plan, workers)
    if qc:
        _quality_control(node, [o.slide_id for o in outcomes if o.status == "ingested" and o.slide_id], as_json)
    node.close()
    raise typer.Exit(1 if any(o.status == "rejected" for o in outcomes) else 0)


def _quality_control(node: Any, slide_ids: list[str], quiet: bool) -> None:
    """QC of freshly ingested slides; its outcome goes to stderr (stdout stays one line per slide)."""
    try:
        job = run_queued_qc(node, slide_ids, quiet)
    except Exception as error:  # noqa: BLE001 - the slides are in; a cluster that cannot start must not hide that
        console.print(f"[yellow]quality control did not run[/yellow]: {error}; the job stays queued for "
                      "`slidebank serve` or `slidebank jobs work`")
        return
    if job is None:
        return
    flagged = [t for t in job["tasks"] if t["summary"].get("flags")]
    colour = "green" if job["state"] == "done" and not flagged else "yellow"
    console.print(f"[{colour}]quality control[/{colour}]: job {job['id']} {job['state']}, "
                  f"{len(flagged)} of {len(job['tasks'])} slide(s) flagged"
                  + (f" ({job['error']})" if job.get("error") else ""))
    for task in flagged:
        console.print(f"  {task['slide_id']}: {'; '.join(task['summary']['flags'])}")


def _ingest_with_progress(node: Any, plan: Any, workers: int) -> list:
    from slidebank.ingest.runner import run_ingest

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    byte_progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )

    slides_task = progress.add_task("slides", total=len(plan.requests))
    bytes_task = byte_progress.add_task("bytes ", total=plan.total_bytes)

    def advance(outcome: Any) -> None:
        progress.advance(slides_task)
        byte_progress.advance(bytes_task, outcome.size)
        colour = {"ingested": "green", "duplicate": "yellow", "rejected": "red"}[outcome.status]
        live.console.print(f"[{colour}]{outcome.status:9}[/{colour}] {outcome.path}")

    with Live(Group(progress, byte_progress), console=console, refresh_per_second=8) as live:
        outcomes = run_ingest(node, plan, workers=workers, on_outcome=advance)

    table = Table(title="Ingest summary")
    for column in ("status", "slide", "slide id", "reason / what to do"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        reason = outcome.error or "; ".join(outcome.warnings)
        table.add_row(outcome.status, outcome.path, outcome.slide_id or "", reason)
    console.print(table)
    counts = {status: sum(o.status == status for o in outcomes) for status in ("ingested", "duplicate", "rejected")}
    console.print(", ".join(f"{n} {status}" for status, n in counts.items()))
    if plan.ignored:
        console.print(f"{len(plan.ignored)} file(s) in the folders were not slides and were ignored")
    return outcomes


@slides_app.command("list")
def slides_list(as_json: JsonOption = False, home: HomeOption = None) -> None:
    """List every slide in the catalog."""
    node = open_node(home)
    slides = node.catalog.list_slides()
    node.close()
    if as_json:
        print_json(slides)
        return
    table = Table()
    for column in ("slide id", "dataset", "size", "vendor", "stain", "organ", "species", "diagnosis"):
        table.add_column(column)
    for s in slides:
        table.add_row(
            s["slide_id"],
            str(s.get("dataset") or ""),
            f"{s['width']}×{s['height']}",
            str(s.get("vendor") or ""),
            str(s.get("stain") or ""),
            str(s.get("organ") or ""),
            str(s.get("species") or ""),
            str(s.get("diagnosis") or ""),
        )
    Console().print(table)


@slides_app.command("show")
def slides_show(slide_id: str, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Everything the catalog knows about one slide."""
    node = open_node(home)
    detail = node.catalog.get_slide(slide_id)
    node.close()
    if detail is None:
        fail(f"no slide {slide_id!r}", 1)
    if as_json:
        print_json(detail)
        return
    table = Table(show_header=False)
    for key, value in detail.items():
        rendered = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
        table.add_row(key, rendered)
    Console().print(table)


@app.command()
def search(
    dataset: Annotated[Optional[list[str]], typer.Option(help="Dataset name (repeatable).")] = None,
    species: Annotated[Optional[list[str]], typer.Option()] = None,
    organ: Annotated[Optional[list[str]], typer.Option()] = None,
    stain: Annotated[Optional[list[str]], typer.Option()] = None,
    vendor: Annotated[Optional[list[str]], typer.Option()] = None,
    diagnosis: Annotated[Optional[list[str]], typer.Option()] = None,
    text: Annotated[Optional[str], typer.Option(help="Free text (slide id, alias, diagnosis).")] = None,
    where: Annotated[Optional[str], typer.Option(
        help="Conditions on measured facts, e.g. \"qc.blur_fraction < 0.05 and qc.passed = 1\".")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Faceted search at image level: filters are OR within a facet and AND across facets."""
    from slidebank.catalog import CatalogError, FactCondition, SearchQuery

    try:
        conditions = FactCondition.parse_all(where) if where else ()
    except CatalogError as error:
        fail(str(error))
    query = SearchQuery(
        where=conditions,
        dataset=dataset or None,
        species=species or None,
        organ=organ or None,
        stain=stain or None,
        vendor=vendor or None,
        diagnosis=diagnosis or None,
        text=text,
        limit=limit,
        offset=offset,
    )
    node = open_node(home)
    result = node.catalog.search(query)
    node.close()
    if as_json:
        print_json(
            {
                "total": result.total,
                "items": result.items,
                "facets": {name: [{"value": v, "count": c} for v, c in values] for name, values in result.facets.items()},
            }
        )
        return
    out = Console()
    table = Table(title=f"{result.total} slide(s)")
    for column in ("slide id", "dataset", "species", "organ", "stain", "diagnosis"):
        table.add_column(column)
    for s in result.items:
        table.add_row(*(str(s.get(k) or "") for k in ("slide_id", "dataset", "species", "organ", "stain", "diagnosis")))
    out.print(table)
    for name, values in result.facets.items():
        out.print(f"[bold]{name}[/bold]: " + ", ".join(f"{v} ({c})" for v, c in values))


@app.command()
def export(
    slide_id: str,
    to: Annotated[Path, typer.Option("--to", help="Folder to write the DICOM files into.")],
    home: HomeOption = None,
) -> None:
    """Write the stored canonical slide as DICOM files (administrators)."""
    from slidebank.access.errors import SlideNotFound
    from slidebank.access.principal import operator
    from slidebank.slides.stored import export_slide

    with opened_node(home, SlideNotFound) as node:
        written = export_slide(node.catalog, node.audit, node.open_blob, operator(), slide_id, to)
    for path in written:
        typer.echo(str(path))


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="File to write (.svs or .tiff).")],
    width: Annotated[int, typer.Option(min=1)] = 8192,
    height: Annotated[int, typer.Option(min=1)] = 8192,
    vendor: Annotated[str, typer.Option(help="aperio or generic")] = "aperio",
    label_text: Annotated[Optional[str], typer.Option(help="Fake PHI printed on the label.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    stain: Annotated[str, typer.Option(help="HE or IHC")] = "HE",
) -> None:
    """Generate a synthetic H&E-like slide with a real pyramid and a label carrying fake PHI."""
    from slidebank.synth import write_synthetic_slide
    from slidebank.synth.layout import Vendor
    from slidebank.synth.tissue import Stain

    if vendor not in ("aperio", "generic"):
        fail("--vendor must be aperio or generic")
    if stain not in ("HE", "IHC"):
        fail("--stain must be HE or IHC")
    slide = write_synthetic_slide(out, width, height, vendor=cast(Vendor, vendor), label_text=label_text, seed=seed,
                                  stain=cast(Stain, stain))
    typer.echo(str(slide.path))


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder for the sample slides and their sidecar.")],
    size: Annotated[int, typer.Option(help="Level-0 side of each slide in pixels.")] = 6000,
) -> None:
    """Generate the demo's sample slides (human and animal, several stains) and metadata.csv."""
    from slidebank.synth.demo import write_demo_collection

    sidecar = write_demo_collection(out, size)
    typer.echo(str(sidecar))


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="worker processes (one per core serves tiles fastest)")] = 1,
    access_log: Annotated[bool, typer.Option(help="log every request (slows tile serving)")] = False,
    jobs: Annotated[bool, typer.Option(help="run queued algorithm jobs (on Dask) in a child process")] = True,
    home: HomeOption = None,
) -> None:
    """Serve the web app, REST API, Deep Zoom and IIIF; run queued jobs in the background."""
    import os
    import subprocess
    import sys

    from granian import Granian
    from granian.constants import Interfaces, Loops, RuntimeModes

    if home:
        os.environ["SLIDEBANK_HOME"] = str(home)
    open_node(home).close()  # migrate before workers start
    console.print(f"Slidebank on http://{host}:{port}/ ({workers} worker process{'es' if workers > 1 else ''})")
    # Granian (a Rust HTTP server) runs the same ASGI app as uvicorn would; on tile serving it answers
    # ~30% more requests per core, because writing responses to sockets is most of a tile's cost.
    # Jobs run in a child process (`slidebank jobs work`): Granian forks its workers from this one,
    # and a fork taken while a job thread holds a lock (imports, database pools) can hang a worker.
    job_worker = subprocess.Popen([sys.executable, "-m", "slidebank.cli.main", "jobs", "work"],
                                  preexec_fn=_end_with_parent) if jobs else None
    try:
        Granian(
            "slidebank.api.app:create_app", factory=True, address=host, port=port, interface=Interfaces.ASGI,
            workers=workers, runtime_mode=RuntimeModes.st, loop=Loops.uvloop, websockets=False,
            log_access=access_log, respawn_failed_workers=True,
        ).serve()
    finally:
        if job_worker is not None:  # a job in flight is left running, for the next runner to resume
            job_worker.terminate()
            try:
                job_worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job_worker.kill()


def _end_with_parent() -> None:
    """In the job worker before it starts: SIGTERM when the server dies, however it dies (Linux)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


if __name__ == "__main__":  # pragma: no cover
    app()
