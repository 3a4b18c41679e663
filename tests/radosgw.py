"""A throwaway Ceph cluster with its S3 gateway (radosgw, Debian's `radosgw` package) for tests.

A real S3 server, not an emulator: one monitor, one OSD on Ceph's in-memory object store (no disk
to prepare), and radosgw in front, all on loopback ports of their own, private to one test session
(and one xdist worker), stopped and deleted afterwards. Starting takes about ten seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from postgres import free_port

DAEMONS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph-authtool", "ceph")


class RadosgwUnavailable(RuntimeError):
    """Ceph's binaries are not installed here; tests skip with this reason."""


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def environment(self) -> dict[str, str]:
        """What a process needs to reach the server through boto3's own settings."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}


def _config(folder: Path, fsid: str, mon_port: int, rgw_port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
ms bind ipv6 = false
keyring = {folder}/keyring
run dir = {folder}/run
admin socket = {folder}/run/$name.asok
log file = {folder}/log/$name.log
mon data = {folder}/mon/$cluster-$id
osd data = {folder}/osd/$cluster-$id
osd objectstore = memstore
memstore device bytes = 4294967296
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {folder}/rgw
"""


@contextlib.contextmanager
def radosgw_server() -> Iterator[S3Server]:
    """Start monitor, OSD and gateway; yield the endpoint and a user's keys; stop and delete all after."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        raise RadosgwUnavailable(f"Ceph binaries not found: {', '.join(missing)} (Debian: ceph-mon ceph-osd radosgw)")
    folder = Path(tempfile.mkdtemp(prefix="slidebank-ceph-"))
    for sub in ("mon", "osd/ceph-0", "run", "log", "rgw"):
        (folder / sub).mkdir(parents=True)
    fsid, mon_port, rgw_port = str(uuid.uuid4()), free_port(), free_port()
    conf = folder / "ceph.conf"
    conf.write_text(_config(folder, fsid, mon_port, rgw_port))
    daemons: list[subprocess.Popen[bytes]] = []

    def run(*command: str) -> str:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-2000:]}")
        return result.stdout

    def start(*command: str) -> None:  # in the foreground (-f), so they are ours to stop
        daemons.append(subprocess.Popen([*command, "-c", str(conf), "-f"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True))

    try:
        keyring = str(folder / "keyring")
        run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        for name, caps in (("client.admin", ("mon", "allow *", "osd", "allow *", "mgr", "allow *")),
                           ("osd.0", ("mon", "allow profile osd", "osd", "allow *", "mgr", "allow profile osd")),
                           ("client.rgw", ("mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw"))):
            run("ceph-authtool", keyring, "--gen-key", "-n", name,
                *[arg for pair in zip(("--cap",) * 3, caps[0::2], caps[1::2], strict=False) for arg in pair])
        run("monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", "--fsid", fsid, str(folder / "monmap"))
        run("ceph-mon", "-c", str(conf), "--mkfs", "-i", "a", "--monmap", str(folder / "monmap"), "--keyring", keyring)
        start("ceph-mon", "-i", "a")
        osd_uuid = str(uuid.uuid4())
        run("ceph", "-c", str(conf), "--connect-timeout", "30", "osd", "new", osd_uuid)
        run("ceph-osd", "-c", str(conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        start("ceph-osd", "-i", "0")
        start("radosgw", "-n", "client.rgw")
        endpoint = f"http://127.0.0.1:{rgw_port}"
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(endpoint, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
                log = folder / "log" / "client.rgw.log"
                raise RuntimeError(f"radosgw did not come up: {log.read_text()[-2000:] if log.exists() else ''}")
            time.sleep(0.25)
        access, secret = uuid.uuid4().hex[:20].upper(), uuid.uuid4().hex
        run("radosgw-admin", "-c", str(conf), "-n", "client.admin", "user", "create", "--uid=slidebank",
            "--display-name=slidebank tests", f"--access-key={access}", f"--secret-key={secret}")
        server = S3Server(endpoint, access, secret)
        _warm_up(server)
        yield server
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in daemons:
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, 9)
                daemon.wait(timeout=5)
        shutil.rmtree(folder, ignore_errors=True)


def _warm_up(server: S3Server) -> None:
    """The gateway creates its index and data pools on the first bucket and object (seconds): pay it here."""
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                          aws_secret_access_key=server.secret_key, region_name="us-east-1")
    client.create_bucket(Bucket="warm-up")
    client.put_object(Bucket="warm-up", Key="first", Body=b"x")
    client.delete_object(Bucket="warm-up", Key="first")
    client.delete_bucket(Bucket="warm-up")
