"""`slidebank run`, `slidebank jobs list|show|cancel|work`, `slidebank algorithms`: processing next
to the data, on Dask. On the node these act as its operator, or `--as USER` with that user's grants."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slidebank.access.principal import OPERATOR
from slidebank.cli.common import (
    HomeOption,
    JsonOption,
    console,
    fail,
    open_node,
    opened_node,
    print_json,
    print_list,
)

jobs_app = typer.Typer(help="Algorithm jobs: list, show, cancel, or run queued jobs.", no_args_is_help=True)
algorithms_app = typer.Typer(help="Installed algorithms (the slidebank.algorithms plug-ins).", no_args_is_help=True)
SchedulerOption = Annotated[
    Optional[str], typer.Option("--scheduler", envvar="SLIDEBANK_DASK_SCHEDULER",
                                help="Dask scheduler (tcp://HOST:PORT); default a LocalCluster.")
]
WorkersOption = Annotated[Optional[int], typer.Option("--workers", min=1, max=256, help="LocalCluster workers.")]


models_app = typer.Typer(help="Models algorithms may load (ONNX), installed by name.", no_args_is_help=True)


def register_job_commands(app: typer.Typer) -> None:
    app.command("run")(run)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(algorithms_app, name="algorithms")
    app.add_typer(models_app, name="models")


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="The name jobs use: --param model=NAME")],
    file: Annotated[Path, typer.Argument(help="An .onnx file")],
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Install a model (checked as ONNX, copied into the node, listed by name)."""
    from slidebank.access.principal import operator
    from slidebank.algorithms.models import ModelError, ModelRegistry

    with opened_node(home) as node:
        try:
            entry = ModelRegistry(node.settings.home / "models", node.audit).install(name, file, operator())
        except (ModelError, OSError) as error:
            fail(str(error))
    print_json(entry) if as_json else console.print(f"installed model {name} ({entry['sha256'][:12]})")


@models_app.command("list")
def models_list(as_json: JsonOption = False, home: HomeOption = None) -> None:
    """The installed models."""
    from slidebank.algorithms.models import ModelRegistry

    with opened_node(home) as node:
        models = ModelRegistry(node.settings.home / "models").list()
    print_list(models, as_json, lambda m: f"{m['name']:24} {m['sha256'][:12]} {m['size']:>12} bytes")


def _parameters(pairs: list[str]) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--param takes NAME=VALUE, not {pair!r}")
        parsed[name.strip()] = value.strip()
    return parsed


def _principal(node: Any, acting_as: str | None) -> Any:
    principal = node.identities.principal_for_requester(acting_as or OPERATOR)
    if principal is None:
        fail(f"no enabled user {acting_as!r}")
    return principal


def run(
    algorithm: Annotated[str, typer.Argument(help="Algorithm name (see `slidebank algorithms list`).")],
    slide: Annotated[Optional[list[str]], typer.Option("--slide", help="Slide id (repeatable).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Every slide of this dataset.")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="NAME=VALUE (repeatable).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Run it now and wait for the end.")] = False,
    time_limit: Annotated[Optional[float], typer.Option(min=0.1, help="Seconds (capped by the operator's limit).")] = None,
    memory_limit: Annotated[Optional[int], typer.Option(min=1, help="MiB per task (capped by the operator's).")] = None,
    acting_as: Annotated[Optional[str], typer.Option("--as", help="Run with this user's grants.")] = None,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Create a job running ALGO over slides; without --wait it is queued for `slidebank serve` or
    `slidebank jobs work`. Exit 1 if the job (with --wait) did not finish as done."""
    from slidebank.access.errors import AccessError
    from slidebank.algorithms.base import ParameterError
    from slidebank.algorithms.registry import UnknownAlgorithm
    from slidebank.jobs import JobError
    from slidebank.processing.submit import submit_job

    if not slide and not dataset:
        fail("name slides with --slide or a dataset with --dataset")
    node = open_node(home)
    try:
        job = submit_job(node.catalog, node.jobs, _principal(node, acting_as), algorithm, slide_ids=slide or [], dataset=dataset,
                         parameters=_parameters(param or []), time_limit_s=time_limit, memory_limit_mb=memory_limit)
    except (UnknownAlgorithm, ParameterError, JobError, AccessError) as error:
        node.close()
        fail(str(error))
    if wait:
        job = _run_with_progress(node, job["id"], scheduler, workers, quiet=as_json)
    node.close()
    if as_json:
        print_json(job)
    else:
        console.print(f"job {job['id']}: {job['state']}" + (f" ({job['error']})" if job.get("error") else ""))
        if job["state"] == "queued":
            console.print("it runs when `slidebank serve` or `slidebank jobs work` is running (or use --wait)")
    if wait and job["state"] != "done":
        raise typer.Exit(1)


def _run_with_progress(node: Any, job_id: str, scheduler: str | None, workers: int | None, quiet: bool) -> dict:
    from slidebank.processing.runner import ClusterSettings, JobRunner

    settings = ClusterSettings.from_environment(scheduler, workers)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=quiet)
    with progress, JobRunner(node, settings) as runner:
        bar = progress.add_task(f"job {job_id[:8]}", total=None)

        def report(job: dict) -> None:
            progress.update(bar, completed=job["progress"]["done"], total=job["progress"]["total"],
                            description=f"{job['algorithm']} {job['state']}")

        runner.run(job_id, report)
    return node.jobs.get(job_id)


def run_queued_qc(node: Any, slide_ids: list[str], quiet: bool) -> dict | None:
    """The quality-control job every ingest ends with (as the operator)."""
    from slidebank.processing.submit import submit_job

    if not slide_ids:
        return None
    principal = node.identities.principal_for_requester(OPERATOR)
    job = submit_job(node.catalog, node.jobs, principal, "qc", slide_ids=slide_ids)
    return _run_with_progress(node, job["id"], None, None, quiet)


def _line(job: dict) -> str:
    progress = job["progress"]
    return (f"{job['id']}  {job['algorithm']:<12} {job['state']:<9} {progress['done']}/{progress['total']}  "
            f"{job['requester']}  {job['created_at'][:19]}" + (f"  {job['error']}" if job.get("error") else ""))


@jobs_app.command("list")
def jobs_list(
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: JsonOption = False, home: HomeOption = None,
) -> None:
    """The latest jobs, newest first."""
    node = open_node(home)
    jobs = node.jobs.list(limit=limit)
    node.close()
    print_list(jobs, as_json, _line)


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """A job with its tasks, timings, results summary and log (its provenance)."""
    from slidebank.jobs import JobNotFound

    with opened_node(home, JobNotFound) as node:
        job = node.jobs.get(job_id)
    if as_json:
        print_json(job)
        return
    console.print(_line(job))
    table = Table()
    for column in ("slide", "state", "attempts", "seconds", "result / error"):
        table.add_column(column, overflow="fold")
    for task in job["tasks"]:
        summary = task["summary"]
        result = task["error"] or ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in list(summary.get("values", {}).items())[:6])
        table.add_row(task["slide_id"], task["state"], str(task["attempts"]),
                      f"{task['seconds']:.2f}" if task["seconds"] is not None else "", result)
    Console().print(table)
    for line in job["log"][-10:]:
        console.print(line)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Stop a job: queued ones at once, running ones at their next tile."""
    from slidebank.jobs import JobNotFound

    with opened_node(home, JobNotFound) as node:
        job = node.jobs.cancel(job_id, OPERATOR)
    if as_json:
        print_json(job)
    else:
        console.print(f"job {job_id}: {'cancel requested' if job['state'] == 'running' else job['state']}")


@jobs_app.command("work")
def jobs_work(scheduler: SchedulerOption = None, workers: WorkersOption = None, home: HomeOption = None) -> None:
    """Run queued jobs until SIGTERM or Ctrl-C (`slidebank serve` runs this next to the web server).
    A job in flight then stays running, and the next runner resumes it."""
    import signal
    import threading

    from slidebank.processing.runner import ClusterSettings, JobRunner

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    node = open_node(home)
    with JobRunner(node, ClusterSettings.from_environment(scheduler, workers), stop=stop) as runner:
        runner.serve_forever()
    node.close()


@algorithms_app.command("list")
def algorithms_list(as_json: JsonOption = False) -> None:
    """Installed algorithms with their parameters, inputs and outputs."""
    from slidebank.algorithms.base import describe
    from slidebank.algorithms.registry import algorithms

    described = [describe(a) for a in algorithms().values()]
    print_list(described, as_json, lambda a: f"[bold]{a['name']}[/bold] {a['version']}: {a['description']}\n  "
               + ", ".join(f"{p['name']}={p['default']}" for p in a["parameters"]))
