"""Quality control validated against known answers: synthetic slides with known tissue masks and
known out-of-focus regions, and a real scanner slide (CMU-1-Small-Region) against a full-resolution
reference measured through OpenSlide."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import json_lines, open_dataset, run_cli
from databases import open_node
from slidebank.synth import tissue_mask, write_synthetic_slide

BLURRED_UNTIL_X = 3000  # the left half of the 6000-pixel-wide blurred slide is out of focus


@pytest.fixture(scope="module")
def qc_node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("qc")
    sharp = write_synthetic_slide(folder / "sharp.svs", 6000, 4000, seed=2)
    blurred = write_synthetic_slide(folder / "blurred.svs", 6000, 4000, seed=2,
                                    blurred=[(0, 0, BLURRED_UNTIL_X, 4000)])
    home = folder / "node"
    run_cli("init", home=home, check=True)
    run_cli("users", "add", "steward", "--role", "data_steward", home=home, check=True)
    run_cli("datasets", "create", "qc", "--policy", "Test", "--duo", "DUO:0000004", "--steward", "steward",
            home=home, check=True)
    ingest = run_cli("ingest", str(sharp.path), str(blurred.path), "--dataset", "qc", "--json", home=home, check=True)
    assert "quality control" in ingest.stderr and "1 of 2 slide(s) flagged" in " ".join(ingest.stderr.split())
    ids = {Path(o["path"]).stem: o["slide_id"] for o in json_lines(ingest.stdout)}
    return home, ids


def show(home: Path, slide_id: str) -> dict:
    return json.loads(run_cli("slides", "show", slide_id, "--json", home=home, check=True).stdout)


def test_tissue_mask_matches_the_known_mask(qc_node: tuple[Path, dict[str, str]]) -> None:
    from slidebank.algorithms.reader import SlideReader
    from slidebank.qc import detectors
    from slidebank.slides.stored import open_stored_slide

    home, ids = qc_node
    node = open_node(home, migrate=False)
    try:
        with open_stored_slide(node.catalog, node.open_blob, ids["sharp"]) as slide:
            reader = SlideReader(slide, ids["sharp"])
            level = reader.level_for(8.0)
            overview, mpp = reader.overview(8.0)
    finally:
        node.close()
    found = detectors.tissue_mask(overview) & ~detectors.pen_mask(overview)
    known = tissue_mask(6000, 4000, seed=2, downsample=2**level)[: found.shape[0], : found.shape[1]]
    assert detectors.iou(found, known) > 0.9
    known_area = known.sum() * mpp * mpp / 1e6
    measured = show(home, ids["sharp"])["qc"]["tissue_area_mm2"]
    assert measured == pytest.approx(known_area, rel=0.08)


def test_blurred_region_is_found_and_the_slide_flagged(qc_node: tuple[Path, dict[str, str]]) -> None:
    home, ids = qc_node
    sharp, blurred = show(home, ids["sharp"])["qc"], show(home, ids["blurred"])["qc"]
    assert sharp["blur_fraction"] == 0 and sharp["passed"] == 1 and sharp["flags"] == ""
    assert blurred["passed"] == 0 and "out of focus" in blurred["flags"]
    # The blur heatmap: one cell per focus tile; cells wholly inside the blurred half score high,
    # cells wholly outside it score low (inferno: bright for 1, dark for 0; transparent off tissue).
    node = open_node(home, migrate=False)
    try:
        from slidebank.storage.crypt import unseal

        [blur] = [h for h in node.annotations.heatmaps(ids["blurred"]) if h["name"] == "blur"]
        png = unseal(node.annotations.sealed_heatmap(ids["blurred"], "blur"), node.keys)
    finally:
        node.close()
    rgba = np.asarray(Image.open(io.BytesIO(png)))
    assert rgba.shape[:2] == (blur["rows"], blur["columns"])
    cell = blur["extent"][0] / blur["columns"]  # level-0 pixels per cell (the grid reaches past the edge)
    assert blur["extent"][0] >= 6000 and cell == 1024  # 256-pixel tiles at 1 µm/px of a 0.25 µm/px slide
    inside = [rgba[r, c] for r in range(blur["rows"]) for c in range(blur["columns"])
              if rgba[r, c, 3] and (c + 1) * cell <= BLURRED_UNTIL_X]
    outside = [rgba[r, c] for r in range(blur["rows"]) for c in range(blur["columns"])
               if rgba[r, c, 3] and c * cell >= BLURRED_UNTIL_X]
    assert inside and outside
    assert all(p[0] > 150 for p in inside) and all(p[0] < 100 for p in outside), (inside, outside)  # score > or < 0.5
    measured = int((rgba[..., 3] > 0).sum())
    assert measured == blurred["focus_tiles"]
    assert len(inside) / measured <= blurred["blur_fraction"] <= 1 - len(outside) / measured


def test_facts_are_searchable_and_failing_slides_reach_the_steward(qc_node: tuple[Path, dict[str, str]]) -> None:
    home, ids = qc_node
    def where(condition: str) -> set[str]:
        found = json.loads(run_cli("search", "--where", condition, "--json", home=home, check=True).stdout)
        return {item["slide_id"] for item in found["items"]}

    assert where("qc.blur_fraction < 0.05") == {ids["sharp"]}
    assert where("qc.blur_fraction >= 0.05 and qc.passed = 0") == {ids["blurred"]}
    assert where("qc.flags != ''") == {ids["blurred"]}
    assert where("qc.tissue_area_mm2 > 0.1 and stain.hematoxylin_mean > 0") == set(ids.values())
    refused = run_cli("search", "--where", "qc.blur_fraction <<< 1", home=home)
    assert refused.returncode == 2 and "cannot read condition" in refused.stderr
    node = open_node(home, migrate=False)
    try:
        notices = node.notifications.of(node.identities.principal_for_user("steward"))
    finally:
        node.close()
    assert any(ids["blurred"] in n["message"] and "out of focus" in n["message"] for n in notices)
    assert not any(ids["sharp"] in n["message"] for n in notices)


def test_tissue_area_of_a_real_slide_matches_a_full_resolution_reference(shared_slides: Path, tmp_path: Path) -> None:
    import openslide
    from skimage import color

    source = shared_slides / "svs" / "CMU-1-Small-Region.svs"
    home = tmp_path / "node"
    open_dataset(home, "real")
    [ingested] = json_lines(run_cli("ingest", str(source), "--dataset", "real", "--json", home=home, check=True).stdout)
    qc = show(home, ingested["slide_id"])["qc"]
    with openslide.OpenSlide(str(source)) as slide:
        pixels = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
    hsv = color.rgb2hsv(pixels)
    reference = ((hsv[..., 1] > 0.07) & (hsv[..., 2] < 0.92)).sum() * mpp * mpp / 1e6  # not glass, pixel by pixel
    assert qc["tissue_area_mm2"] == pytest.approx(reference, rel=0.15)
    assert qc["passed"] == 1 and qc["blur_fraction"] < 0.05  # a sharp, clean scan
