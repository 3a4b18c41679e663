"""Governance against a real server: every documented route with every role, grants, tokens, audit."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pydicom
import pytest
from sqlalchemy import delete, insert, select

from conftest import json_lines, open_dataset, run_cli, running_server
from databases import catalog_sql, copy_database, in_seconds, open_node
from slidebank.api.app import create_app
from slidebank.db.models import AuditEvent
from slidebank.node import Node

AUDIT = AuditEvent.__table__

PATH_VALUES = {
    "level": "0", "col": "0", "row": "0", "extension": "jpeg", "region": "full", "size": "max", "rotation": "0",
    "quality_format": "default.jpg", "name": "restricted", "request_id": "no-such-request",
    "grant_id": "no-such-grant", "job_id": "no-such-job", "heatmap": "tissue",
    "frames": "1", "frame": "1", "path": "00480105/0/00282000",  # DICOMweb: the frame, the ICC profile
}
ROLES = {"steward": "data_steward", "dac": "dac_member", "alice": "researcher", "bob": "researcher",
         "root": "administrator"}
READERS = {"alice", "steward", "root"}  # granted, steward of the dataset, administrator


@dataclass
class Site:
    base: str
    home: Path
    restricted: str  # slide id in the controlled dataset
    public: str  # slide id in the open dataset
    tokens: dict[str, str]
    grant: str

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, aperio_slide, generic_slide) -> Iterator[Site]:  # noqa: ANN001
    home = tmp_path_factory.mktemp("access") / "node"
    init = run_cli("init", home=home, check=True)
    assert "admin" in init.stderr and "password" in init.stderr
    for name, role in ROLES.items():
        run_cli("users", "add", name, "--role", role, "--org", "hospital-a", home=home, check=True)
    run_cli("datasets", "create", "restricted", "--policy", "Cancer research only; apply to the DAC",
            "--duo", "DUO:0000007", "--committee", "dac", "--steward", "steward", home=home, check=True)
    open_dataset(home, "public")
    [restricted] = json_lines(run_cli("ingest", str(aperio_slide.path), "--dataset", "restricted", "--json",
                                      home=home, check=True).stdout)
    [public] = json_lines(run_cli("ingest", str(generic_slide.path), "--dataset", "public", "--json",
                                  home=home, check=True).stdout)
    tokens = {}
    for name in ROLES:
        created = run_cli("tokens", "create", name, "--expires", "30", home=home, check=True)
        tokens[name] = created.stdout.strip().splitlines()[-1]
    request = run_cli("access", "request", "--user", "alice", "--dataset", "restricted",
                      "--purpose", "Train a tumour detector", home=home, check=True).stdout.strip()
    until = (date.today() + timedelta(days=30)).isoformat()
    grant = run_cli("access", "approve", request, "--expires", until, "--as", "dac", home=home, check=True)
    with running_server(home, env={"SLIDEBANK_PRINCIPAL_CACHE_SECONDS": "0.2"}) as base:
        yield Site(base, home, restricted["slide_id"], public["slide_id"], tokens, grant.stdout.strip())


QUERY_VALUES = {"level": "0", "tiles": "0_0"}  # for the routes' required query parameters


def documented_get_routes(site: Site) -> list[str]:
    """Every documented GET route, with its required query parameters filled in."""
    paths = httpx.get(f"{site.base}/openapi.json").json()["paths"]
    routes = []
    for path, operations in paths.items():
        if "get" in operations:
            required = [p["name"] for p in operations["get"].get("parameters", []) if p["in"] == "query" and p.get("required")]
            routes.append(path + ("?" + "&".join(f"{name}={QUERY_VALUES[name]}" for name in required) if required else ""))
    return routes


@functools.cache
def dicom_uids(slide_id: str, home: Path) -> dict[str, str]:
    """The study, series and level-0 instance UIDs of a slide, for the DICOMweb routes."""
    node = open_node(home)
    try:
        [base] = [f for f in node.volume_files(slide_id) if f.level == 0]
        blob = node.open_blob(base)
        with blob.stream() as handle:
            header = pydicom.dcmread(handle, stop_before_pixels=True)
        blob.close()
    finally:
        node.close()
    return {"study": str(header.StudyInstanceUID), "series": str(header.SeriesInstanceUID),
            "sop": str(header.SOPInstanceUID)}


def is_slide_route(path: str) -> bool:
    """A route about one slide (a QIDO-RS search scoped to a study answers every caller, with only
    what it may read: a listing, not a slide route)."""
    return "{slide_id}" in path or ("{study}" in path and not path.endswith(("/series", "/instances")))


def fill(path: str, slide_id: str, home: Path) -> str:
    values = {**PATH_VALUES, "slide_id": slide_id, **(dicom_uids(slide_id, home) if "{study}" in path else {})}
    filled = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
    # a whole level rendered at its own size can be more than one answer renders: ask for a fitted one
    return filled + "?viewport=256,256" if filled.endswith("/rendered") else filled


@pytest.mark.parametrize("who", [None, *ROLES])
def test_every_documented_route_with_every_role(site: Site, who: str | None) -> None:
    """A route added later that serves a restricted slide, or lists it, to someone without a grant fails here."""
    routes = documented_get_routes(site)
    slide_routes = [path for path in routes if is_slide_route(path)]
    assert len(slide_routes) >= 20 and "/api/search" in routes and "/dicomweb/studies" in routes
    reader = who in READERS
    restricted_study = dicom_uids(site.restricted, site.home)["study"]
    with site.client(who) as http:
        for path in routes:
            response = http.get(fill(path, site.restricted, site.home), follow_redirects=False)
            assert response.status_code != 500, path
            if is_slide_route(path):
                if reader:
                    assert response.status_code in (200, 303), (path, response.status_code, response.text[:200])
                else:
                    assert response.status_code == 404, (who, path, response.status_code)
            elif not reader and path not in ("/api/audit",):
                assert site.restricted not in response.text, f"{path} shows a restricted slide to {who}"
                assert restricted_study not in response.text, f"{path} shows a restricted study to {who}"
            # the open dataset is everyone's
            if is_slide_route(path):
                assert http.get(fill(path, site.public, site.home), follow_redirects=False).status_code in (200, 303), path


def test_search_counts_and_errors_do_not_reveal_restricted_slides(site: Site) -> None:
    with site.client(None) as anonymous, site.client("alice") as alice:
        seen = anonymous.get("/api/search").json()
        assert seen["total"] == 1 and dict(map(tuple, seen["facets"]["dataset"])) == {"public": 1}
        assert alice.get("/api/search").json()["total"] == 2
        unknown = anonymous.get("/api/slides/sb-000000000000")
        hidden = anonymous.get(f"/api/slides/{site.restricted}")
        assert (unknown.status_code, unknown.json()) == (hidden.status_code, hidden.json())
        assert anonymous.get("/api/datasets").json()  # dataset descriptions stay public


def test_bad_tokens_are_refused(site: Site) -> None:
    token = run_cli("tokens", "create", "bob", "--label", "expiring", home=site.home, check=True).stdout.strip()
    assert httpx.get(f"{site.base}/api/me", headers={"Authorization": f"Bearer {token}"}).json()["name"] == "bob"
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (tampered, "sbk_" + "x" * 43, "not-a-token", "Basic"):
        header = bad if bad == "Basic" else f"Bearer {bad}"
        response = httpx.get(f"{site.base}/api/slides", headers={"Authorization": header})
        assert response.status_code in (401, 403), bad
    assert run_cli("tokens", "revoke", token, home=site.home).returncode == 0  # revoked: refused at once
    assert httpx.get(f"{site.base}/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    soon = run_cli("tokens", "create", "bob", "--label", "soon", home=site.home, check=True).stdout.strip()
    with catalog_sql(site.home) as sql:  # its time runs out two seconds from now
        sql.exec_driver_sql(f"UPDATE api_tokens SET expires_at = {in_seconds(2)} WHERE label = 'soon'")
    assert httpx.get(f"{site.base}/api/me", headers={"Authorization": f"Bearer {soon}"}).status_code == 200
    time.sleep(2.5)  # cached, but not past its expiry
    assert httpx.get(f"{site.base}/api/me", headers={"Authorization": f"Bearer {soon}"}).status_code == 401


def test_access_request_decision_and_revocation_over_http(site: Site) -> None:
    with site.client("bob") as bob, site.client("dac") as dac, site.client("alice") as alice:
        filed = bob.post("/api/access-requests", json={"dataset": "restricted", "purpose": "QC study"})
        assert filed.status_code == 201
        request_id = filed.json()["id"]
        assert any("bob asks" in n["message"] for n in dac.get("/api/notifications").json())
        not_mine = alice.post(f"/api/access-requests/{request_id}/approve", json={"expires": "2026-12-31"})
        unknown = alice.post("/api/access-requests/00000000-0000-0000-0000-000000000000/approve",
                             json={"expires": "2026-12-31"})
        assert not_mine.status_code == unknown.status_code == 404  # not on the committee: as if it did not exist
        assert not_mine.json()["detail"].replace(request_id, "ID") == unknown.json()["detail"].replace(
            "00000000-0000-0000-0000-000000000000", "ID")
        rejected = dac.post(f"/api/access-requests/{request_id}/reject", json={"reason": "no ethics approval"})
        assert rejected.status_code == 200
        assert any("no ethics approval" in n["message"] for n in bob.get("/api/notifications").json())
        assert bob.get(f"/api/slides/{site.restricted}").status_code == 404

        assert alice.get(f"/api/slides/{site.restricted}").status_code == 200
        assert dac.post(f"/api/grants/{site.grant}/revoke").status_code == 200
        assert alice.get(f"/api/slides/{site.restricted}").status_code == 404
        assert alice.get(f"/slides/{site.restricted}_files/12/0_0.jpeg").status_code == 404


def test_reads_are_audited_and_the_chain_detects_tampering(site: Site) -> None:
    with site.client("steward") as steward:
        assert steward.get(f"/slides/{site.restricted}_files/12/1_1.jpeg").status_code == 200
        assert steward.get(f"/api/slides/{site.restricted}").status_code == 200
    entries = json_lines(run_cli("audit", "show", "--dataset", "restricted", "--json", home=site.home,
                                 check=True).stdout)
    reads = {(e["actor"], e["action"]) for e in entries if e["slide_id"] == site.restricted}
    assert {("steward", "tiles.read"), ("steward", "metadata.read"), ("alice", "metadata.read")} <= reads
    assert any(e["grant"] == site.grant for e in entries if e["actor"] == "alice")
    with site.client("dac") as dac:
        exported = dac.get("/api/audit", params={"dataset": "restricted"})
        assert exported.status_code == 200 and len(exported.json()) == len(entries)
        assert dac.get("/api/audit", params={"dataset": "public"}).status_code == 403
    assert run_cli("audit", "verify", home=site.home).returncode == 0

    with catalog_sql(site.home) as sql:
        backup = [dict(row) for row in sql.execute(select(AUDIT)).mappings()]
    for tamper in (
        "UPDATE audit_events SET actor = 'nobody' WHERE id = 3",
        "DELETE FROM audit_events WHERE id = 2",
        "UPDATE audit_events SET id = -1 WHERE id = 2; UPDATE audit_events SET id = 2 WHERE id = 3;"
        "UPDATE audit_events SET id = 3 WHERE id = -1",  # two entries swapped
    ):
        with catalog_sql(site.home) as sql:
            for statement in tamper.split(";"):
                sql.exec_driver_sql(statement)
        verdict = run_cli("audit", "verify", "--json", home=site.home)
        assert verdict.returncode == 1, tamper
        assert json_lines(verdict.stdout)[0]["first_bad_id"] in (2, 3), tamper
        with catalog_sql(site.home) as sql:  # the chain as it was
            sql.execute(delete(AUDIT))
            sql.execute(insert(AUDIT), backup)
    assert run_cli("audit", "verify", home=site.home).returncode == 0


SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFORMANCE_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
                      "response_schema_conformance")


def schemathesis_config(values: dict[str, list[str]]) -> str:
    """schemathesis.toml: the conformance checks, and real identifiers for path parameters (most of
    the time), so that answers about real slides, jobs and features are checked, not only 404s.

    The checks are chosen here, not with `--checks`, so that per-operation settings could apply."""
    lines = ["[checks]", "enabled = false", *(f"{check}.enabled = true" for check in CONFORMANCE_CHECKS)]
    for name, entries in values.items():
        lines += ["", f"[dictionaries.{name}]", f"values = {json.dumps(entries)}"]
    if values:
        lines += ["", "[parameters]"]
        lines += [f'"path.{name}" = {{ dictionary = "{name}", probability = 0.8 }}' for name in values]
    return "\n".join(lines) + "\n"


def run_schemathesis(base: str, workdir: Path, values: dict[str, list[str]] | None = None,
                     token: str | None = None, only: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Property-based requests from the server's OpenAPI document, every answer held to it; the
    result and every exchange (HAR entries). `only`: schemathesis operation filters."""
    workdir.mkdir(parents=True, exist_ok=True)
    config, har = workdir / "schemathesis.toml", workdir / "exchanges.har"
    config.write_text(schemathesis_config(values or {}))
    command = [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{base}/openapi.json", *only,
               "--max-examples", "30", "--generation-deterministic", "--report", "har", "--report-har-path", str(har)]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    return result, json.loads(har.read_text())["log"]["entries"] if har.exists() else []


def answered(entries: list[dict]) -> set[tuple[str, str]]:
    """(method, path) of every exchange that got a 2xx answer."""
    return {(e["request"]["method"], urlsplit(e["request"]["url"]).path) for e in entries
            if 200 <= e["response"]["status"] < 300}


@pytest.fixture
def fuzzed_site(site: Site, tmp_path: Path) -> Iterator[str]:
    """A copy of the site on its own server: schemathesis as an administrator erases subjects,
    revokes grants and locks its address out of logging in, as it should be able to."""
    clone = tmp_path / "node"
    shutil.copytree(site.home, clone, ignore=shutil.ignore_patterns("catalog.sqlite*"))
    copy_database(site.home, clone)  # consistent while the site's server writes
    with running_server(clone) as base:
        yield base


def site_identifiers(base: str, site: Site) -> dict[str, list[str]]:
    """Real values for every path parameter, with a feature drawn on each slide to have one."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {site.tokens['root']}"}, timeout=30) as root:
        triangle = {"type": "Polygon", "coordinates": [[[10, 10], [90, 10], [50, 70], [10, 10]]]}
        feature = {"type": "Feature", "geometry": triangle, "properties": {"classification": {"name": "Tumor"}}}
        features = [root.post(f"/api/slides/{slide}/annotations", json=feature).json()["ids"][0]
                    for slide in (site.restricted, site.public)]
        requests = [r["id"] for r in root.get("/api/access-requests").json()]
        return {
            "slide_id": [site.restricted, site.public],
            "name": [d["name"] for d in root.get("/api/datasets").json()] + sorted(ROLES),
            "heatmap": sorted({h["name"] for s in (site.restricted, site.public)
                               for h in root.get(f"/api/slides/{s}/heatmaps").json()}),
            "job_id": [j["id"] for j in root.get("/api/jobs").json()],
            "feature_id": features,
            "request_id": requests,
            "grant_id": [site.grant, *requests],
        }


@pytest.mark.parametrize("who", [None, "root"])
def test_schemathesis_finds_no_server_errors_or_schema_violations(
    site: Site, fuzzed_site: str, tmp_path: Path, who: str | None
) -> None:
    """Property-based requests from the OpenAPI document, with an administrator's token and without:
    no 500, and every answer's status, content type and body as the document says."""
    values = site_identifiers(fuzzed_site, site)
    token = site.tokens[who] if who else None
    # Reads first, then writes: schemathesis runs operations concurrently, and an administrator's
    # writes erase slides and datasets, so a single run would make what the reads see a matter of order.
    result, exchanges = run_schemathesis(fuzzed_site, tmp_path / "reads", values, token, ("--include-method", "GET"))
    assert result.returncode == 0, result.stdout[-6000:]
    result, _ = run_schemathesis(fuzzed_site, tmp_path / "writes", values, token, ("--exclude-method", "GET"))
    assert result.returncode == 0, result.stdout[-6000:]
    # The checks saw real answers, not only refusals of made-up identifiers.
    readable = site.restricted if who else site.public
    expected = {"/api/search", f"/api/slides/{readable}", f"/api/slides/{readable}/annotations",
                f"/api/slides/{readable}/heatmaps", f"/api/slides/{readable}/annotations/density"}
    if who:
        expected |= {"/api/datasets/restricted", "/api/jobs", *(f"/api/jobs/{job}" for job in values["job_id"][:1])}
    assert {("GET", path) for path in expected} <= answered(exchanges)


TYPED_ROUTERS = {"catalog", "access", "annotations", "processing"}  # api/catalog.py, access.py, annotations.py, …


def test_every_json_answer_of_the_typed_routers_has_a_model(node: Node) -> None:
    """A route that goes back to returning a bare dict (schema `{}` or any object) fails here, before
    schemathesis would have nothing to hold its answers to."""
    spec = create_app(node).openapi()
    untyped = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if not TYPED_ROUTERS & set(operation.get("tags", ())):
                continue
            for status, response in operation["responses"].items():
                for media_type, content in response.get("content", {}).items():
                    schema = content.get("schema", {})
                    named = schema.get("$ref") or schema.get("items", {}).get("$ref")
                    if media_type.endswith("json") and not named and status != "422":
                        untyped.append(f"{method.upper()} {path} {status} {media_type}: {schema}")
                    if media_type.startswith("image/") and not status.startswith("2"):
                        untyped.append(f"{method.upper()} {path} {status}: an error is not an image")
            if not any(status.startswith("2") for status in operation["responses"]):
                untyped.append(f"{method.upper()} {path}: no success answer documented")
    assert not untyped, "\n".join(untyped)


BROKEN_APP = """
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse

from slidebank.api.schemas import Health, errors

app = FastAPI(title="broken")


@app.get("/healthz", responses=errors(404))
def health() -> Health:
    return JSONResponse({"status": "ok", "version": 2})  # built by hand, so unchecked: not a string


@app.get("/teapot", responses=errors(404))
def teapot() -> Health:
    raise HTTPException(418, "I'm a teapot")  # not a documented answer
"""


def test_the_conformance_checks_can_fail(tmp_path: Path) -> None:
    """The same run against an app whose answers break its own document fails, naming both breaks."""
    (tmp_path / "broken_app.py").write_text(BROKEN_APP)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("granian")), "--interface", "asgi", "--host", "127.0.0.1", "--port",
         str(port), "--working-dir", str(tmp_path), "--no-log", "broken_app:app"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/openapi.json", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the broken app did not come up"
            time.sleep(0.1)
        result, _ = run_schemathesis(base, tmp_path)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
    assert result.returncode != 0
    assert "Response violates schema" in result.stdout and "GET /healthz" in result.stdout, result.stdout[-4000:]
    assert "Undocumented status code" in result.stdout and "GET /teapot" in result.stdout, result.stdout[-4000:]


def test_hostile_requests_get_clean_refusals(site: Site) -> None:
    with site.client("alice") as alice, site.client(None) as anonymous:
        for text in ("' OR 1=1 --", "%", "_", "\\", "\"; DROP TABLE images; --", "sb-%"):
            found = anonymous.get("/api/search", params={"text": text})
            assert found.status_code == 200 and site.restricted not in found.text, text
        assert anonymous.get("/api/search", params={"dataset": "restricted' OR '1'='1"}).json()["total"] == 0
        for path in ("/api/slides/..%2F..%2Fetc%2Fpasswd", "/slides/..%2F..%2Fcatalog.sqlite.dzi",
                     "/static/..%2F..%2F..%2Fnode.key", "/static/../../api/app.py", "/iiif/3/..%2F/info.json",
                     f"/slides/{site.public}_files/0/0_0.jpeg%00.png"):
            response = anonymous.get(path)
            assert response.status_code in (400, 404), (path, response.status_code)
        body = b'{"dataset": "restricted", "purpose": "' + b"a" * 200_000 + b'"}'
        with site.client("alice") as one_off:  # the server closes this connection: keep it out of the pool
            try:  # it may answer 413 and close before the client finished sending
                huge = one_off.post("/api/access-requests", content=body, headers={"Content-Type": "application/json"})
                assert huge.status_code == 413
            except httpx.RemoteProtocolError:
                pass
        assert all(len(r["purpose"]) < 10_000 for r in alice.get("/api/access-requests").json())
        assert alice.post("/api/access-requests", json={"dataset": "restricted"}).status_code == 400
        assert anonymous.post("/api/access-requests", json={"dataset": "public", "purpose": "x"}).status_code == 401


def test_browser_sessions_need_the_csrf_token_for_changes(site: Site) -> None:
    password = "correct horse battery"
    run_cli("users", "add", "erin", "--role", "data_steward", "--password-stdin", home=site.home, check=True,
            stdin=password + "\n")
    run_cli("datasets", "create", "erin-data", "--policy", "x", "--steward", "erin", home=site.home, check=True)
    with httpx.Client(base_url=site.base) as browser:
        assert browser.post("/api/session", json={"name": "erin", "password": "wrong"}).status_code == 401
        logged_in = browser.post("/api/session", json={"name": "erin", "password": password})
        assert logged_in.status_code == 200
        cookie = browser.cookies["slidebank_session"]
        assert "httponly" in logged_in.headers["set-cookie"].lower()
        assert "samesite=strict" in logged_in.headers["set-cookie"].lower()
        assert browser.get("/api/me").json()["name"] == "erin"
        request = {"dataset": "restricted", "purpose": "QC"}
        assert browser.post("/api/access-requests", json=request).status_code == 403  # no CSRF token
        csrf = logged_in.json()["csrf"]
        assert browser.post("/api/access-requests", json=request, headers={"X-CSRF-Token": csrf}).status_code == 201
        browser.cookies.set("slidebank_session", cookie[:-2] + ("aa" if cookie[-2:] != "aa" else "bb"))
        tampered = browser.get("/api/me")
        assert tampered.status_code == 401 and "slidebank_session=;" in tampered.headers["set-cookie"]  # cleared
        browser.cookies.set("slidebank_session", cookie)
        logged_out = browser.delete("/api/session", headers={"X-CSRF-Token": csrf})
        assert logged_out.status_code == 200
        assert any(h.startswith("slidebank_session=") and "max-age=0" in h.lower()
                   for h in logged_out.headers.get_list("set-cookie"))
