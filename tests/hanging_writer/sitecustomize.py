"""Make the DICOM writer hang for one slide: a real hang, in a real ingest worker process.

Why: the watchdog in `slidebank.ingest.watchdog` exists because third-party writers can wait
forever (wsidicom 0.31's pyramid writer does, now and then, after an encoder error). Production
code has no test hooks, so tests put this folder on PYTHONPATH for the `slidebank` process; Python
imports `sitecustomize` at start-up in that process and in every worker it spawns. This one wraps
wsidicomizer's public `WsiDicomizer.open`: once a source whose file name contains "hang" is open in
a process, wsidicom's JPEG encoders block forever there. The pyramid writer is then stuck where a
real hang leaves it: started, its temporary tile cache created, its encoder threads waiting.

With SLIDEBANK_TEST_HANG_MARKER set to a folder, a file named after the process id is written there
when the hang begins, so a test can tell that the slide was stopped while hanging in the writer.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

try:
    from wsidicom.codec.encoder import JpegEncoder, PillowEncoder
    from wsidicomizer import WsiDicomizer
except ImportError:  # not the Slidebank environment: nothing to wrap
    WsiDicomizer = None  # type: ignore[assignment,misc]  # (the name is None outside Slidebank's venv)

_HANGING = threading.Event()  # set once a "hang" source is open in this process


def _hang_forever() -> None:
    marker = os.environ.get("SLIDEBANK_TEST_HANG_MARKER")
    if marker:
        Path(marker).mkdir(parents=True, exist_ok=True)
        (Path(marker) / str(os.getpid())).write_text("hanging in a wsidicom encoder\n")
    threading.Event().wait()  # never set


if WsiDicomizer is not None:
    _open = WsiDicomizer.open.__func__  # type: ignore[attr-defined]  # (a classmethod's function)

    def _open_noting_hangs(cls: type, filepath: Any, *args: Any, **kwargs: Any) -> Any:
        if "hang" in Path(filepath).name:
            _HANGING.set()
        return _open(cls, filepath, *args, **kwargs)

    WsiDicomizer.open = classmethod(_open_noting_hangs)  # type: ignore[method-assign,assignment]  # (the test's wrap)

    for _encoder in (JpegEncoder, PillowEncoder):
        def _encode(self: Any, image: Any, _original: Any = _encoder.encode) -> bytes:
            if _HANGING.is_set():
                _hang_forever()
            return _original(self, image)

        _encoder.encode = _encode  # type: ignore[method-assign]  # (the test's wrap)
