"""`slidebank ingest`: validate, de-identify, convert, store, catalog and quality-control slides,
with a progress display for people and one JSON line per slide for scripts."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Group
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

from slidebank.cli.common import HomeOption, JsonOption, console, fail, open_node, print_json
from slidebank.cli.jobs import run_queued_qc


def register_ingest_command(app: typer.Typer) -> None:
    app.command()(ingest)
    app.command()(push)


def push(
    slides: Annotated[Optional[list[str]], typer.Argument(help="Slide ids (or --dataset).")] = None,
    to: Annotated[str, typer.Option("--to", help="The archive's DICOMweb root, e.g. http://pacs/dicom-web")] = "",
    dataset: Annotated[Optional[str], typer.Option(help="Every slide of this dataset.")] = None,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Store slides' canonical, de-identified DICOM instances in a DICOMweb archive (STOW-RS). Audited per slide."""
    from slidebank.access.principal import operator
    from slidebank.ingest.pacs import ArchiveError
    from slidebank.ingest.pacs import push as push_slides

    if not to or bool(slides) == bool(dataset):
        fail("name the slides or one --dataset, and the archive with --to")
    node = open_node(home)
    try:
        chosen = list(slides or [s["slide_id"] for s in node.catalog.list_slides() if s.get("dataset") == dataset])
        if not chosen:
            fail(f"dataset {dataset!r} holds no slide")
        sent = push_slides(node, chosen, to, operator())
    except ArchiveError as error:
        fail(str(error), 1)
    finally:
        node.close()
    if as_json:
        print_json({"to": to, "instances": sent})
    else:
        for slide_id, count in sent.items():
            console.print(f"{slide_id}: {count} instance(s) stored at {to}")


def ingest(
    paths: Annotated[list[str], typer.Argument(help="Slide files or folders (searched recursively), or a DICOMweb "
                                                     "archive's study, series or query: dicomweb+http://host/root/"
                                                     "studies/UID[/series/UID] or …/studies?PatientID=…")],
    dataset: Annotated[Optional[str], typer.Option(help="Dataset to put the slides in.")] = None,
    metadata: Annotated[Optional[Path], typer.Option(help="Sidecar CSV/JSON describing the slides.")] = None,
    slide_id: Annotated[Optional[str], typer.Option("--slide-id", help="Keep your own id (one slide only).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    scheduler: Annotated[Optional[str], typer.Option(
        help="Prepare the slides on this Dask cluster's workers (tcp://host:8786) instead of local processes; "
             "they must see the files at the same paths.")] = None,
    mpp: Annotated[Optional[float], typer.Option(
        "--mpp", help="Pixel size in µm/px for slides whose file does not say (a sidecar mpp column wins).")] = None,
    qc: Annotated[bool, typer.Option(help="Run quality control on the new slides (a Dask job).")] = True,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Validate, de-identify, convert to DICOM WSI, store, catalog and quality-control slides.
    Exit 1 if any slide was rejected."""
    from dataclasses import replace

    from slidebank.ingest.pacs import ArchiveError, fetch, is_archive_url
    from slidebank.ingest.pipeline import with_default_mpp
    from slidebank.ingest.runner import IngestUsageError, plan_ingest, run_ingest
    from slidebank.ingest.sidecar import SidecarError, parse_mpp
    from slidebank.ingest.stow import upload_folder

    try:
        default_mpp = parse_mpp(mpp) if mpp is not None else None
    except ValueError as error:
        fail(f"--{error}")
    node = open_node(home)
    retrieved = upload_folder(node.settings.home) if any(is_archive_url(p) for p in paths) else None
    try:
        inputs = [Path(p) for p in paths if not is_archive_url(p)]
        for url in (p for p in paths if is_archive_url(p)):
            assert retrieved is not None
            found = fetch(url, retrieved)
            if not found:
                fail(f"{url}: the archive holds nothing that matches")
            inputs += found
        plan = plan_ingest(inputs, dataset=dataset, sidecar=metadata, slide_id=slide_id)
        plan = replace(plan, requests=tuple(with_default_mpp(r, default_mpp) for r in plan.requests))
        if as_json:
            outcomes = run_ingest(node, plan, workers=workers, scheduler=scheduler,
                                  on_outcome=lambda o: print_json(o.to_json()))
        else:
            outcomes = _ingest_with_progress(node, plan, workers, scheduler)
    except (FileNotFoundError, IngestUsageError, SidecarError, ArchiveError) as error:
        fail(str(error))
    finally:
        if retrieved is not None:
            shutil.rmtree(retrieved, ignore_errors=True)  # what came from the archive is stored now, or refused
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


def _ingest_with_progress(node: Any, plan: Any, workers: int, scheduler: str | None) -> list:
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
        outcomes = run_ingest(node, plan, workers=workers, scheduler=scheduler, on_outcome=advance)

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
