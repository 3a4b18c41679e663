"""Every change commits with its audit entry, or neither does; a job's results replace the previous
ones at once; the command line and the API record the same events, because the services write them.

The failures are real: a SQLite trigger makes the database refuse the audit row (or the heatmap row)
inside the very transaction of the change."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import DatabaseError

from conftest import json_lines, run_cli
from databases import allow_inserts, catalog_sql, open_node, refuse_inserts
from slidebank.access.principal import operator
from slidebank.node import Node


@pytest.fixture
def node(tmp_path: Path, generic_slide) -> Iterator[Node]:  # noqa: ANN001
    home = tmp_path / "node"
    run_cli("init", home=home, check=True)
    for name, role in (("dac", "dac_member"), ("alice", "researcher"), ("steward", "data_steward")):
        run_cli("users", "add", name, "--role", role, home=home, check=True)
    run_cli("datasets", "create", "study", "--policy", "apply", "--committee", "dac", "--steward", "steward",
            home=home, check=True)
    sidecar = tmp_path / "meta.csv"
    sidecar.write_text(f"file,subject,dataset\n{generic_slide.path.name},PATIENT-1,study\n")
    run_cli("ingest", str(generic_slide.path), "--metadata", str(sidecar), "--no-qc", home=home, check=True)
    opened = open_node(home)
    yield opened
    opened.close()


def refuse_audit(node: Node, action: str) -> None:
    refuse_inserts(node.settings.home, "audit_events", "audit unavailable", f"NEW.action = '{action}'")


def allow_audit(node: Node) -> None:
    allow_inserts(node.settings.home, "audit_events")


def count(node: Node, table: str, where: str = "1 = 1") -> int:
    with catalog_sql(node.settings.home) as sql:
        return int(sql.exec_driver_sql(f"SELECT count(*) FROM {table} WHERE {where}").scalar_one())


def test_an_approval_that_cannot_be_audited_does_not_happen(node: Node) -> None:
    alice, dac = (node.identities.principal_for_user(n) for n in ("alice", "dac"))
    request = node.governance.request_access(alice, "study", "QC study")
    notices = count(node, "notifications")
    refuse_audit(node, "access.approve")
    with pytest.raises(DatabaseError, match="audit unavailable"):
        node.governance.approve(request, dac, date.today() + timedelta(days=10))
    assert count(node, "grants") == 0 and count(node, "notifications") == notices
    assert node.governance.requests(alice)[0]["status"] == "pending"
    allow_audit(node)
    grant = node.governance.approve(request, dac, date.today() + timedelta(days=10))
    approvals = [e for e in node.audit.entries() if e["action"] == "access.approve"]
    assert [(e["grant"], e["dataset"]) for e in approvals] == [(grant, "study")]


def test_an_erasure_that_cannot_be_audited_erases_nothing(node: Node) -> None:
    [slide] = node.catalog.list_slides()
    subject = node.catalog.get_slide(slide["slide_id"])["subject"]  # type: ignore[index]
    refuse_audit(node, "subject.erase")
    with pytest.raises(DatabaseError):
        node.erasures.erase(subject, operator())
    assert node.catalog.slide_exists(slide["slide_id"]) and count(node, "erasures") == 0
    assert all(node.store.exists(f.sha256) for f in node.catalog.stored_files(slide["slide_id"]))
    allow_audit(node)
    assert node.erasures.erase(subject, operator()).images == 1
    assert not node.catalog.slide_exists(slide["slide_id"])


def test_an_annotation_that_cannot_be_audited_is_not_stored(node: Node) -> None:
    from slidebank.annotations.geojson import parse_document

    [slide] = node.catalog.list_slides()
    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}}
    refuse_audit(node, "annotations.create")
    with pytest.raises(DatabaseError):
        node.annotations.add(slide["slide_id"], parse_document(feature), operator())
    assert count(node, "annotation_features") == 0


def test_a_jobs_results_replace_the_previous_ones_at_once(node: Node) -> None:
    """A second run whose storing fails half way leaves the first run's features, facts and heatmaps."""
    from slidebank.algorithms.base import HeatmapRaster, SlideResult
    from slidebank.jobs import JobSpec
    from slidebank.processing.task import TaskRequest, store_results

    [slide] = node.catalog.list_slides()
    slide_id = slide["slide_id"]

    def run(value: float) -> None:
        job = node.jobs.create(JobSpec("qc", "1.0.0", {}, (slide_id,), "operator"))
        request = TaskRequest(node.settings, job["id"], node.jobs.job_id(job["id"]), "qc", "1.0.0", {}, slide_id,
                              "operator", None, None)
        features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [i, i]}, "properties": {}}
                    for i in range(3)]
        raster = HeatmapRaster(np.full((2, 2), value, np.float32), (100.0, 100.0), "inferno", {})
        result = SlideResult(values={"qc.blur_fraction": value}, features=features, heatmaps={"blur": raster})
        store_results(node, request, result, "study", None, {"values": result.values, "tiles_read": 0}, 0.1, "0" * 64)

    run(0.1)
    before = (count(node, "annotation_features"), node.catalog.facts(slide_id), count(node, "heatmaps"))
    refuse_inserts(node.settings.home, "heatmaps", "disk full")
    with pytest.raises(DatabaseError, match="disk full"):
        run(0.9)
    after = (count(node, "annotation_features"), node.catalog.facts(slide_id), count(node, "heatmaps"))
    assert after == before and before[1]["qc"]["blur_fraction"] == pytest.approx(0.1)


def test_the_command_line_and_the_api_record_the_same_events(node: Node, tmp_path: Path) -> None:
    from slidebank.api.app import create_app

    [slide] = node.catalog.list_slides()
    home = node.settings.home
    token = run_cli("tokens", "create", "dac", home=home, check=True).stdout.strip()
    steward = run_cli("tokens", "create", "steward", home=home, check=True).stdout.strip()
    until = (date.today() + timedelta(days=10)).isoformat()
    first = run_cli("access", "request", "--user", "alice", "--dataset", "study", "--purpose", "a", home=home,
                    check=True).stdout.strip()
    second = run_cli("access", "request", "--user", "alice", "--dataset", "study", "--purpose", "b", home=home,
                     check=True).stdout.strip()
    run_cli("access", "approve", first, "--expires", until, "--as", "dac", home=home, check=True)
    geojson = tmp_path / "a.geojson"
    geojson.write_text('{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {}}')
    run_cli("annotations", "import", slide["slide_id"], str(geojson), home=home, check=True)
    with TestClient(create_app(node)) as client:  # the API in-process: what is under test is the event, not HTTP
        approved = client.post(f"/api/access-requests/{second}/approve", json={"expires": until},
                               headers={"Authorization": f"Bearer {token}"})
        assert approved.status_code == 200
        created = client.post(f"/api/slides/{slide['slide_id']}/annotations",
                              json={"type": "Point", "coordinates": [2, 2]},
                              headers={"Authorization": f"Bearer {steward}"})
        assert created.status_code == 201
    entries = json_lines(run_cli("audit", "show", "--json", home=home, check=True).stdout)
    by_action = {}
    for entry in entries:
        by_action.setdefault(entry["action"], []).append(entry["actor"])
    assert by_action["access.approve"] == ["dac", "dac"]
    assert by_action["annotations.create"] == ["operator", "steward"]
    assert by_action["access.request"] == ["alice", "alice"]
