"""Governance against a real server: every documented route with every role, grants, tokens, audit."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest

from conftest import json_lines, open_dataset, run_cli, running_server

PATH_VALUES = {
    "level": "0", "col": "0", "row": "0", "extension": "jpeg", "region": "full", "size": "max", "rotation": "0",
    "quality_format": "default.jpg", "name": "restricted", "request_id": "no-such-request",
    "grant_id": "no-such-grant", "job_id": "no-such-job", "heatmap": "tissue",
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


def documented_get_routes(site: Site) -> list[str]:
    paths = httpx.get(f"{site.base}/openapi.json").json()["paths"]
    return [path for path, operations in paths.items() if "get" in operations]


def fill(path: str, slide_id: str) -> str:
    values = {**PATH_VALUES, "slide_id": slide_id}
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


@pytest.mark.parametrize("who", [None, *ROLES])
def test_every_documented_route_with_every_role(site: Site, who: str | None) -> None:
    """A route added later that serves a restricted slide, or lists it, to someone without a grant fails here."""
    routes = documented_get_routes(site)
    slide_routes = [path for path in routes if "{slide_id}" in path]
    assert len(slide_routes) >= 8 and "/api/search" in routes
    reader = who in READERS
    with site.client(who) as http:
        for path in routes:
            response = http.get(fill(path, site.restricted), follow_redirects=False)
            assert response.status_code != 500, path
            if "{slide_id}" in path:
                if reader:
                    assert response.status_code in (200, 303), (path, response.status_code, response.text[:200])
                else:
                    assert response.status_code == 404, (who, path, response.status_code)
            elif not reader and path not in ("/api/audit",):
                assert site.restricted not in response.text, f"{path} shows a restricted slide to {who}"
            # the open dataset is everyone's
            if "{slide_id}" in path:
                assert http.get(fill(path, site.public), follow_redirects=False).status_code in (200, 303), path


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
    with sqlite3.connect(site.home / "catalog.sqlite") as db:  # its time runs out two seconds from now
        db.execute("UPDATE api_tokens SET expires_at = datetime('now', '+2 seconds') WHERE label = 'soon'")
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

    database = site.home / "catalog.sqlite"
    backup = database.read_bytes()
    for tamper in (
        "UPDATE audit_events SET actor = 'nobody' WHERE id = 3",
        "DELETE FROM audit_events WHERE id = 2",
        "UPDATE audit_events SET id = -1 WHERE id = 2; UPDATE audit_events SET id = 2 WHERE id = 3;"
        "UPDATE audit_events SET id = 3 WHERE id = -1",  # two entries swapped
    ):
        with sqlite3.connect(database) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.executescript(tamper)
        verdict = run_cli("audit", "verify", "--json", home=site.home)
        assert verdict.returncode == 1, tamper
        assert json_lines(verdict.stdout)[0]["first_bad_id"] in (2, 3), tamper
        with sqlite3.connect(database) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        database.write_bytes(backup)
    assert run_cli("audit", "verify", home=site.home).returncode == 0


@pytest.mark.parametrize("who", [None, "root"])
def test_schemathesis_finds_no_server_errors_or_schema_violations(site: Site, who: str | None) -> None:
    """Property-based requests from the OpenAPI document, with a valid token and without."""
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{site.base}/openapi.json",
               "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
               "--max-examples", "30", "--generation-deterministic"]
    if who:
        command += ["--header", f"Authorization: Bearer {site.tokens[who]}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-4000:]


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
