"""A throwaway Orthanc with its DICOMweb plugin (Debian's `orthanc`, `orthanc-dicomweb`), for tests and
bench/dicomweb.py: the reference archive Slidebank's DICOMweb is held against and pulls from.

Started on a free loopback port with its own storage folder, no DICOM (DIMSE) listener and no
authentication, stopped and deleted afterwards. `make install` installs the packages.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class OrthancUnavailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed (`make install` installs both)."""


@dataclass(frozen=True)
class RunningOrthanc:
    base: str  # its REST API
    dicomweb: str  # its DICOMweb root

    def store(self, files: list[Path]) -> list[str]:
        """Upload DICOM files through the REST API; their Orthanc ids."""
        ids = []
        with httpx.Client(timeout=120) as client:
            for path in files:
                answer = client.post(f"{self.base}/instances", content=path.read_bytes())
                answer.raise_for_status()
                ids.append(answer.json()["ID"])
        return ids


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_orthanc(threads: int = 8) -> Iterator[RunningOrthanc]:
    if not ORTHANC.is_file() or not DICOMWEB_PLUGIN.is_file():
        raise OrthancUnavailable(f"{ORTHANC} and {DICOMWEB_PLUGIN} are needed (make install)")
    folder = Path(tempfile.mkdtemp(prefix="orthanc-"))
    port = _free_port()
    config = {
        "Name": "slidebank-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": port,
        "HttpServerThreads": threads,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen([str(ORTHANC), str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(folder / 'orthanc.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/system", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("Orthanc did not come up in 30 s")
            time.sleep(0.1)
        yield RunningOrthanc(base, f"{base}/dicom-web")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
