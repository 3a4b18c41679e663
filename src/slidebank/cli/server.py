"""`slidebank serve`: the web app, REST API, Deep Zoom and IIIF on Granian, with the job loop beside it."""

from __future__ import annotations

from typing import Annotated

import typer

from slidebank.cli.common import HomeOption, console, open_node


def register_serve_command(app: typer.Typer) -> None:
    app.command()(serve)


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
