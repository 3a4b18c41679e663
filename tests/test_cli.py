"""The `slidebank` command as scripts and stewards use it: real executable, real files, real server."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from wsidicom import WsiDicom

from conftest import json_lines, open_dataset, run_cli, running_server


@pytest.fixture
def batch(tmp_path: Path, aperio_slide, generic_slide) -> Path:  # noqa: ANN001
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(aperio_slide.path, folder / "case1.svs")
    shutil.copy(generic_slide.path, folder / "case2.tiff")
    (folder / "broken.svs").write_bytes(aperio_slide.path.read_bytes()[:50_000])
    (folder / "metadata.csv").write_text(
        "file,dataset,subject,species,anatomical_site,stain,diagnosis\n"
        "case1.svs,tox-study,RAT-7,rat,liver,H&E,necrosis\n"
        "case2.tiff,tox-study,RAT-8,rat,kidney,PAS,no abnormality detected\n"
    )
    return folder


def test_ingest_json_lines_exit_status_and_catalog_commands(batch: Path, tmp_path: Path) -> None:
    home = tmp_path / "node"
    result = run_cli("ingest", str(batch), "--metadata", str(batch / "metadata.csv"), "--json", home=home)
    assert result.returncode == 1, result.stderr  # one file was rejected
    lines = json_lines(result.stdout)
    assert all(set(line) == {"path", "status", "slide_id", "error"} for line in lines)
    by_name = {Path(line["path"]).name: line for line in lines}
    assert {name: line["status"] for name, line in by_name.items()} == {
        "case1.svs": "ingested",
        "case2.tiff": "ingested",
        "broken.svs": "rejected",
    }
    assert by_name["broken.svs"]["error"] and by_name["case1.svs"]["error"] is None

    again = run_cli("ingest", str(batch / "case1.svs"), "--json", home=home)
    assert again.returncode == 0
    assert json_lines(again.stdout)[0]["status"] == "duplicate"

    listed = json_lines(run_cli("slides", "list", "--json", home=home, check=True).stdout)[0]
    assert len(listed) == 2

    slide_id = by_name["case1.svs"]["slide_id"]
    shown = json_lines(run_cli("slides", "show", slide_id, "--json", home=home, check=True).stdout)[0]
    for key in ("width", "height", "level_count", "levels", "mpp_x", "objective_power", "vendor",
                "original_format", "source_sha256", "canonical_size", "source_associated_images",
                "associated_images_stored", "provenance"):
        assert key in shown, key
    assert shown["vendor"] == "aperio" and shown["original_format"] == "aperio-svs"
    assert shown["level_count"] == len(shown["levels"]) >= 4
    assert shown["provenance"]["tools"]["wsidicomizer"]

    found = json_lines(run_cli("search", "--organ", "liver", "--json", home=home, check=True).stdout)[0]
    assert [item["slide_id"] for item in found["items"]] == [slide_id]
    organ_counts = {f["value"]: f["count"] for f in found["facets"]["organ"]}
    assert organ_counts.get("liver") == 1 and organ_counts.get("kidney") == 1

    assert run_cli("slides", "show", "no-such-slide", home=home).returncode == 1

    out = tmp_path / "export"
    exported = run_cli("export", slide_id, "--to", str(out), home=home, check=True).stdout.split()
    assert len(exported) == shown["level_count"]
    with WsiDicom.open(exported) as wsi:
        assert (wsi.size.width, wsi.size.height) == (shown["width"], shown["height"])


def test_human_output_has_progress_and_summary(batch: Path, tmp_path: Path) -> None:
    result = run_cli("ingest", str(batch / "case2.tiff"), home=tmp_path / "node")
    assert result.returncode == 0, result.stderr
    assert "Ingest summary" in result.stderr and "1 ingested" in result.stderr


def test_bad_sidecar_is_reported_with_line_numbers_and_nothing_ingested(batch: Path, tmp_path: Path) -> None:
    sidecar = tmp_path / "bad.csv"
    sidecar.write_text("file,sex\ncase1.svs,female\ncase2.tiff,sometimes\n")
    home = tmp_path / "node"
    result = run_cli("ingest", str(batch), "--metadata", str(sidecar), "--json", home=home)
    assert result.returncode == 2
    assert "line 3" in result.stderr
    assert result.stdout == ""


def test_slide_id_needs_exactly_one_slide(batch: Path, tmp_path: Path) -> None:
    result = run_cli("ingest", str(batch), "--slide-id", "X1", home=tmp_path / "node")
    assert result.returncode == 2 and "one slide" in result.stderr


def test_synth_command_writes_an_openslide_readable_slide(tmp_path: Path) -> None:
    out = tmp_path / "s.svs"
    run_cli("synth", str(out), "--width", "900", "--height", "700", "--label-text", "ROE^RICHARD", home=tmp_path, check=True)
    import openslide

    with openslide.OpenSlide(out) as slide:
        assert slide.dimensions == (900, 700)
        assert "label" in slide.associated_images


def test_serve_answers_the_rest_api_over_http(batch: Path, tmp_path: Path) -> None:
    home = tmp_path / "node"
    open_dataset(home, "liver-study")
    run_cli("ingest", str(batch), "--json", "--dataset", "liver-study", home=home)
    with running_server(home, "--workers", "2") as base, httpx.Client(base_url=base, timeout=10) as http:
        slides = http.get("/api/slides").json()
        assert len(slides) == 2
        detail = http.get(f"/api/slides/{slides[0]['slide_id']}").json()
        assert detail["levels"] and detail["provenance"]["tools"]
        page = http.get("/api/search", params={"limit": 1, "offset": 1}).json()
        assert page["total"] == 2 and len(page["items"]) == 1 and "vendor" in page["facets"]
        assert http.get("/api/search", params={"limit": 0}).status_code == 400
        [dataset] = http.get("/api/datasets").json()
        assert dataset["name"] == "liver-study" and dataset["images"] == 2
        assert http.get("/api/datasets/liver-study").json()["facets"]["vendor"]
        assert http.get("/api/slides/nope").status_code == 404
        documented = set(http.get("/openapi.json").json()["paths"])
        assert {"/slides/{slide_id}.dzi", "/iiif/3/{slide_id}/info.json", "/api/search"} <= documented
