"""Shared fixtures: a fresh node per test, the real slides in ../shared/slides, and synthetic slides."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

import databases
from databases import database_env
from postgres import PostgresUnavailable, create_database, postgres_cluster
from radosgw import RadosgwUnavailable, S3Server, radosgw_server
from slidebank.catalog import Catalog
from slidebank.db import UnitOfWork, upgrade_schema
from slidebank.db import create_database_engine as create_catalog_engine
from slidebank.node import Node, NodeSettings

# Jobs (every ingest's QC) run on a Dask LocalCluster of threads in tests: the same scheduler, a
# second to start instead of three; tests/test_jobs.py runs worker processes explicitly.
os.environ.setdefault("SLIDEBANK_DASK_PROCESSES", "0")
os.environ.setdefault("SLIDEBANK_DASK_WORKERS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_SLIDES = Path(os.environ.get("SLIDEBANK_SHARED_SLIDES", REPO.parent / "shared" / "slides"))
SLIDEBANK_BIN = Path(sys.executable).with_name("slidebank")
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


# The longest test starts first (xdist hands each worker a run of consecutive tests), so the rest
# of the suite packs around it instead of waiting for it at the end.
LONGEST = "test_federated.py::test_three_nodes_train_one_model_and_share_no_pixels"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.endswith(LONGEST))
    if databases.POSTGRESQL:  # the PostgreSQL pass: what touches a node's database, once
        kept = [item for item in items if not _sqlite_pass_only(item)]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def _sqlite_pass_only(item: pytest.Item) -> bool:
    """Tests the PostgreSQL pass leaves out: those that open no node's database; those that run on
    both databases in every pass already (parametrized by `catalog_url`); and the `slow` few whose
    minutes go to something else than the database (multi-GB files, kills, federated training), to
    keep CI within its time."""
    return any(item.get_closest_marker(name) for name in ("no_database", "slow")) \
        or "catalog_url" in getattr(item, "fixturenames", ())


@pytest.fixture(scope="session", autouse=True)
def test_database_server(request: pytest.FixtureRequest) -> None:
    """On the PostgreSQL pass, every node's database lives on this session's private cluster."""
    if databases.POSTGRESQL:
        databases.use_server(str(request.getfixturevalue("postgres_server")))


@pytest.fixture
def shared_slides() -> Path:
    """The real scanner-written slides; tests using them skip cleanly where the folder is absent."""
    if not (SHARED_SLIDES / "README.md").is_file():
        pytest.skip(f"real slides not available at {SHARED_SLIDES}")
    return SHARED_SLIDES


@pytest.fixture
def node_home(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture
def node(node_home: Path) -> Iterator[Node]:
    opened = Node(NodeSettings(home=node_home, database_url=databases.database_url(node_home)))
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="session")
def aperio_slide(synthetic_dir: Path):  # noqa: ANN201 - SyntheticSlide
    """A 3000×2400 synthetic Aperio SVS with label, macro and fake PHI (shared, read-only)."""
    from slidebank.synth import write_synthetic_slide

    return write_synthetic_slide(
        synthetic_dir / "JaneDoe_S26-4711.svs",
        3000,
        2400,
        vendor="aperio",
        label_text="DOE^JANE MRN:90210417 S26-4711",
        seed=7,
    )


@pytest.fixture(scope="session")
def generic_slide(synthetic_dir: Path):  # noqa: ANN201 - SyntheticSlide
    from slidebank.synth import write_synthetic_slide

    return write_synthetic_slide(synthetic_dir / "generic.tiff", 1500, 1100, vendor="generic", seed=3)


class TestBrowser:
    """Chromium for the page tests. Playwright's `wait_for_function` evaluates strings in the page,
    which the app's content security policy (rightly) forbids, so these contexts bypass it;
    `test_browser.py` checks the policy itself on a page opened with `strict_page`."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser

    def new_context(self, **options: Any) -> Any:
        return self.browser.new_context(bypass_csp=True, **options)

    def new_page(self, **options: Any) -> Any:
        return self.browser.new_page(bypass_csp=True, **options)

    def strict_page(self, **options: Any) -> Any:
        return self.browser.new_page(**options)


@pytest.fixture(scope="module")
def browser() -> Iterator[TestBrowser]:
    """Debian's Chromium driven by Playwright, one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield TestBrowser(launched)
        launched.close()


def run_cli(
    *args: str, home: Path, check: bool = False, timeout: float = 600, stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the real `slidebank` executable, as a user would (`env` adds to the environment)."""
    inherited = {k: v for k, v in os.environ.items() if k != "SLIDEBANK_DATABASE_URL"}  # `env` may set one
    env = {**inherited, "SLIDEBANK_HOME": str(home), **database_env(home), **(env or {})}
    result = subprocess.run(
        [str(SLIDEBANK_BIN), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False,
        input=stdin,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"slidebank {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@contextlib.contextmanager
def running_server(home: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`slidebank serve` as a real process on a free port; yields its base URL, stops it after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inherited = {k: v for k, v in os.environ.items() if k != "SLIDEBANK_DATABASE_URL"}  # `env` may set one
    server_env = {**inherited, "SLIDEBANK_HOME": str(home), **database_env(home), **(env or {})}
    process = subprocess.Popen(
        [str(SLIDEBANK_BIN), "serve", "--host", "127.0.0.1", "--port", str(port), *extra],
        env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: teardown can end the workers it forked
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # generous: CI machines are slow and busy
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"slidebank serve exited: {process.stderr.read() if process.stderr else ''}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("slidebank serve did not come up in 60 s")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # Granian can hang when stopped while a worker still starts
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # the job worker and any forked HTTP worker
            os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def open_wsidicom(node: Node, slide_id: str) -> Iterator[object]:
    """The stored pyramid of a slide opened with wsidicom: the reference Slidebank's reader is held against."""
    from wsidicom import WsiDicom

    blobs = [node.open_blob(f) for f in node.volume_files(slide_id)]
    wsi = WsiDicom.open_streams([blob.stream() for blob in blobs])
    try:
        yield wsi
    finally:
        wsi.close()
        for blob in blobs:
            blob.close()


OPEN_POLICY = ("--policy", "Synthetic test data, no restriction", "--duo", "DUO:0000004")


def open_dataset(home: Path, name: str) -> str:
    """Create an open dataset (GA4GH DUO no-restriction) so anonymous readers may see its slides."""
    run_cli("datasets", "create", name, *OPEN_POLICY, home=home, check=True)
    return name


# --- a catalog database on SQLite and on PostgreSQL ------------------------------------------------


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def catalog_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database server for the session: a SQLite file, or a private PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('catalog') / 'session.sqlite'}"
    return str(request.getfixturevalue("postgres_server"))


@pytest.fixture
def database_url(catalog_url: str, tmp_path: Path) -> str:
    """A fresh, empty database per test on the session's server, so counts are exact."""
    if catalog_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return create_database(catalog_url)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_catalog_engine(database_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def catalog(engine: Engine) -> Catalog:
    return Catalog(UnitOfWork(engine))


# --- an S3 server (Ceph's radosgw) and a PostgreSQL server for the many-hosts tests -----------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    try:
        server = radosgw_server()
        endpoint = server.__enter__()
    except RadosgwUnavailable as reason:
        pytest.skip(str(reason))
    try:
        yield endpoint
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def s3_environment(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """boto3's settings for the test server, in this process's environment for the test."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    return s3_server.environment()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    try:
        cluster = postgres_cluster()
        url = cluster.__enter__()
    except PostgresUnavailable as reason:
        pytest.skip(str(reason))
    try:
        yield url
    finally:
        cluster.__exit__(None, None, None)
