"""Erasure on request: nothing readable of the subject's slides stays in the store; others are untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from conftest import json_lines, run_cli, running_server
from databases import catalog_bytes, catalog_sql
from slidebank.db.models import JobTask


def ingest_for(home: Path, slide: Path, subject: str, folder: Path) -> dict:
    copy = folder / slide.name
    shutil.copy(slide, copy)
    sidecar = folder / f"{subject}.csv"
    sidecar.write_text(f"file,subject,species,stain\n{copy.name},{subject},human,H&E\n")
    [line] = json_lines(run_cli("ingest", str(copy), "--dataset", "study", "--metadata", str(sidecar), "--json",
                                home=home, check=True).stdout)
    return json_lines(run_cli("slides", "show", line["slide_id"], "--json", home=home, check=True).stdout)[0]


def stored_bytes(home: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted((home / "store").rglob("*")) if path.is_file())


def test_erase_subject_leaves_no_readable_byte_and_keeps_the_rest(tmp_path: Path, aperio_slide, generic_slide) -> None:  # noqa: ANN001
    home = tmp_path / "node"
    run_cli("init", home=home, check=True)
    run_cli("datasets", "create", "study", "--policy", "apply to the DAC", home=home, check=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    erased = ingest_for(home, aperio_slide.path, "PATIENT-7", tmp_path / "a")
    kept = ingest_for(home, generic_slide.path, "PATIENT-8", tmp_path / "b")
    files = {f["sha256"]: f for f in erased["files"]}
    blob_paths = [p for p in (home / "store" / "objects").rglob("*") if p.name in files]
    assert len(blob_paths) == len(files) >= 2
    needles = [path.read_bytes()[len(path.read_bytes()) // 2:][:4096] for path in blob_paths]  # frame data
    drawn = tmp_path / "drawn.geojson"
    drawn.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
                                 "properties": {}}))
    run_cli("annotations", "import", erased["slide_id"], str(drawn), home=home, check=True)

    report = json_lines(run_cli("erase", "--subject", erased["subject"], "--json", home=home, check=True).stdout)[0]
    assert report == {"images": 1, "blobs_deleted": len(files), "datasets": ["study"]}
    assert not any(path.exists() for path in blob_paths)
    with catalog_sql(home) as sql:  # DICOMweb's index: nothing left to search or serve
        indexed = {slide: n for slide, n in sql.exec_driver_sql(
            "SELECT images.slide_id, COUNT(*) FROM dicom_instances JOIN images ON images.id = dicom_instances.image_id "
            "GROUP BY images.slide_id")}
    assert erased["slide_id"] not in indexed and indexed[kept["slide_id"]] == len(kept["files"]) - 1
    remaining = stored_bytes(home)
    assert remaining and not any(needle in remaining for needle in needles)
    slides = json_lines(run_cli("slides", "list", "--json", home=home, check=True).stdout)[0]
    assert [s["slide_id"] for s in slides] == [kept["slide_id"]]
    assert run_cli("slides", "show", erased["slide_id"], "--json", home=home).returncode != 0
    run_cli("export", kept["slide_id"], "--to", str(tmp_path / "out"), home=home, check=True)  # the other is whole
    with catalog_sql(home) as sql:  # derived results went too (QC ran at ingest)
        assert sql.exec_driver_sql("SELECT count(*) FROM annotation_features").scalar() == 0
        assert sql.exec_driver_sql("SELECT count(DISTINCT image_id) FROM heatmaps").scalar() == 1
        assert sql.exec_driver_sql("SELECT count(DISTINCT image_id) FROM slide_facts").scalar() == 1
        summaries = {slide: summary for slide, summary in sql.execute(select(JobTask.slide_id, JobTask.summary))}
    assert summaries[erased["slide_id"]] == {} and summaries[kept["slide_id"]]["values"]

    entries = json_lines(run_cli("audit", "show", "--json", home=home, check=True).stdout)
    assert any(e["action"] == "subject.erase" and e["detail"]["images"] == 1 for e in entries)
    assert run_cli("audit", "verify", home=home).returncode == 0
    assert run_cli("erase", "--subject", erased["subject"], home=home).returncode == 1  # nothing left to erase


def test_data_steward_erases_over_http_and_others_cannot(tmp_path: Path, generic_slide) -> None:  # noqa: ANN001
    home = tmp_path / "node"
    run_cli("init", home=home, check=True)
    for name, role in (("steward", "data_steward"), ("alice", "researcher")):
        run_cli("users", "add", name, "--role", role, home=home, check=True)
    run_cli("datasets", "create", "study", "--policy", "apply to the DAC", "--steward", "steward", home=home,
            check=True)
    (tmp_path / "a").mkdir()
    slide = ingest_for(home, generic_slide.path, "PATIENT-9", tmp_path / "a")
    tokens = {n: run_cli("tokens", "create", n, home=home, check=True).stdout.strip() for n in ("steward", "alice")}
    with running_server(home, env={"SLIDEBANK_PRINCIPAL_CACHE_SECONDS": "0.1"}) as base:
        def post(who: str) -> httpx.Response:
            return httpx.post(f"{base}/api/erasures", json={"subject": slide["subject"]},
                              headers={"Authorization": f"Bearer {tokens[who]}"})

        assert post("alice").status_code == 404
        steward = {"Authorization": f"Bearer {tokens['steward']}"}
        assert httpx.get(f"{base}/api/slides/{slide['slide_id']}", headers=steward).status_code == 200
        done = post("steward")
        assert done.status_code == 200 and done.json()["images"] == 1
        assert httpx.get(f"{base}/api/slides/{slide['slide_id']}", headers=steward).status_code == 404
        assert httpx.get(f"{base}/slides/{slide['slide_id']}_files/0/0_0.jpeg", headers=steward).status_code == 404


def test_pseudonym_map_is_kept_only_when_configured_and_only_encrypted(
    tmp_path: Path, generic_slide, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    home = tmp_path / "node"
    run_cli("init", home=home, check=True)
    (tmp_path / "a").mkdir()
    first = ingest_for(home, generic_slide.path, "MRN-55501234", tmp_path / "a")
    assert run_cli("pseudonyms", "reveal", first["subject"], home=home).returncode != 0  # not kept by default

    monkeypatch.setenv("SLIDEBANK_KEEP_PSEUDONYM_MAP", "1")
    (tmp_path / "b").mkdir()
    copy = tmp_path / "other.tiff"
    shutil.copy(generic_slide.path, copy)
    with open(copy, "ab") as handle:  # other bytes, so not a duplicate; readers ignore the tail
        handle.write(b"\0" * 16)
    kept = ingest_for(home, copy, "MRN-55509999", tmp_path / "b")
    revealed = run_cli("pseudonyms", "reveal", kept["subject"], home=home, check=True).stdout.strip()
    assert revealed == "MRN-55509999"
    assert b"MRN-5550" not in catalog_bytes(home), "identifiers are stored sealed"
    run_cli("erase", "--subject", kept["subject"], home=home, check=True)
    assert run_cli("pseudonyms", "reveal", kept["subject"], home=home).returncode != 0  # erased with the subject
