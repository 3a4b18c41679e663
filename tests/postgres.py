"""A throwaway PostgreSQL cluster for tests: initdb in a temporary folder, a unix socket, no TCP.

The catalog must behave the same on PostgreSQL as on SQLite, so its tests run on both. The cluster
is private to one test session (and one xdist worker): its own data folder, socket folder and
port, stopped and deleted afterwards. PostgreSQL refuses to run as root, so when the tests run as
root the server runs as the `postgres` system user (or `nobody`) via `runuser`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

DEFAULT_BINARIES = ("/usr/lib/postgresql/*/bin",)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (or no way to run them); tests skip with this reason."""


def find_binaries() -> Path:
    """`SLIDEBANK_PG_BIN`, else the newest /usr/lib/postgresql/N/bin, else `pg_ctl` on PATH."""
    configured = os.environ.get("SLIDEBANK_PG_BIN")
    candidates = [Path(configured)] if configured else []
    for pattern in DEFAULT_BINARIES:
        root = Path(pattern.split("*")[0])
        if root.is_dir():
            versions = sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
            candidates += [v / "bin" for v in versions]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")


def _server_user() -> str | None:
    """The account to run the server as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root without `runuser` to drop privileges for PostgreSQL")
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and no unprivileged user to run PostgreSQL as")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(command: list[str], user: str | None, log: Path | None = None) -> None:
    prefix = ["runuser", "-u", user, "--"] if user else []
    result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        detail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}\n{detail}")


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Start a private cluster; yield a SQLAlchemy URL of an empty database; stop and delete it after."""
    binaries = find_binaries()
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="sbpg-"))  # short: unix socket paths are limited to ~100 bytes
    data, sockets, log = root / "data", root / "sock", root / "server.log"
    sockets.mkdir()
    if user:
        entry = pwd.getpwnam(user)
        for path in (root, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    port = free_port()
    started = False
    try:
        _run(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ],
            user,
        )
        options = f"-k {sockets} -p {port} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        _run(
            [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"],
            user,
            log,
        )
        started = True
        yield create_database(f"postgresql+psycopg://postgres@/postgres?host={sockets}&port={port}", "slidebank")
    finally:
        if started:
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user)
        shutil.rmtree(root, ignore_errors=True)


def _parts(url: str) -> tuple[str, int, str]:
    """(socket folder, port, database) of a URL made by `postgres_cluster`."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return str(parsed.query["host"]), int(str(parsed.query["port"])), str(parsed.database)


def create_database(server_url: str, name: str | None = None) -> str:
    """A new empty database on the same server as `server_url`; returns its URL."""
    host, port, _ = _parts(server_url)
    name = name or f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')  # name is ours: letters, digits, underscore
    return f"postgresql+psycopg://postgres@/{name}?host={host}&port={port}"


def dump(url: str) -> bytes:
    """The database as SQL (pg_dump, plain format): its every row, for restores and for searching."""
    host, port, name = _parts(url)
    return subprocess.run([str(find_binaries() / "pg_dump"), "-h", host, "-p", str(port), "-U", "postgres",
                           "--no-owner", name], capture_output=True, timeout=120, check=True).stdout


def dump_restore(source_url: str, target_url: str) -> None:
    """Copy one database into another (empty) one on the same server: pg_dump piped into psql."""
    host, port, target = _parts(target_url)
    subprocess.run([str(find_binaries() / "psql"), "-h", host, "-p", str(port), "-U", "postgres", "-q",
                    "-v", "ON_ERROR_STOP=1", "-d", target], input=dump(source_url), capture_output=True,
                   timeout=120, check=True)
