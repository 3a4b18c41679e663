"""Annotations, QC heatmaps and jobs in the web app: real Chromium (Debian's) driven by Playwright,
against a real `slidebank serve`, with data put there by the real command line."""

from __future__ import annotations

import io
import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from conftest import ARTIFACTS, CHROMIUM, json_lines, open_dataset, run_cli, running_server
from databases import catalog_sql

PASSWORD = "annotate the margins"
LOADED = ("window.slidebankViewer && window.slidebankViewer.world.getItemCount() === 1 "
          "&& window.slidebankViewer.world.getItemAt(0).getFullyLoaded() "
          "&& window.slidebankAnnotations && document.querySelector('#annotations-panel').dataset.mode")
GREEN = "#00ff00"  # the test's class colour: nothing on an H&E slide is this green

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (make system-deps)")


@dataclass(frozen=True)
class Site:
    base: str
    slide_id: str
    flagged_id: str  # a slide with too little tissue: QC flags it
    unknown_size_id: str  # a slide whose pixel size (µm per pixel) the catalog does not know
    token: str  # the researcher's API token
    home: Path

    def api(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers={"Authorization": f"Bearer {self.token}"}, timeout=10)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, aperio_slide) -> Iterator[Site]:  # noqa: ANN001
    ARTIFACTS.mkdir(exist_ok=True)
    home = tmp_path_factory.mktemp("annotations") / "node"
    run_cli("init", home=home, check=True)
    open_dataset(home, "breast")
    [slide] = json_lines(run_cli("ingest", str(aperio_slide.path), "--json", "--dataset", "breast",
                                 home=home, check=True).stdout)  # ingest runs QC: heatmaps, a done job
    small = home.parent / "small.svs"
    run_cli("synth", str(small), "--width", "800", "--height", "600", home=home, check=True)
    [flagged] = json_lines(run_cli("ingest", str(small), "--json", "--dataset", "breast", home=home, check=True).stdout)
    unsized = home.parent / "unsized.svs"
    run_cli("synth", str(unsized), "--width", "1200", "--height", "900", home=home, check=True)
    [unknown] = json_lines(run_cli("ingest", str(unsized), "--json", "--dataset", "breast", home=home,
                                   check=True).stdout)
    # As ingest will catalog a scan that does not say its pixel size (until it does so itself).
    with catalog_sql(home) as sql:
        sql.execute(text("UPDATE images SET mpp_x = NULL, mpp_y = NULL WHERE slide_id = :slide"),
                    {"slide": unknown["slide_id"]})
    for name, role in (("ana", "researcher"), ("ada", "administrator")):
        run_cli("users", "add", name, "--role", role, "--password-stdin", home=home, check=True, stdin=PASSWORD + "\n")
    token = run_cli("tokens", "create", "ana", home=home, check=True).stdout.strip().splitlines()[-1]
    with running_server(home) as base:
        yield Site(base, slide["slide_id"], flagged["slide_id"], unknown["slide_id"], token, home)


def logged_in_page(browser, base: str, name: str):  # noqa: ANN001, ANN201
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.goto(f"{base}/")
    page.fill("#login input[name=name]", name)
    page.fill("#login input[name=password]", PASSWORD)
    page.click("#login button")
    page.wait_for_selector("#who")
    return page


def open_viewer(page, site: Site) -> None:  # noqa: ANN001
    page.goto(f"{site.base}/view/{site.slide_id}")
    page.wait_for_function(LOADED)


def to_image(page, x: float, y: float) -> tuple[float, float]:  # noqa: ANN001
    """Level-0 pixel under a page point, as OpenSeadragon maps it."""
    point = page.evaluate("""([x, y]) => {
        const box = document.querySelector('#viewer').getBoundingClientRect();
        const p = slidebankViewer.world.getItemAt(0).viewerElementToImageCoordinates(
            new OpenSeadragon.Point(x - box.left, y - box.top));
        return [p.x, p.y];
    }""", [x, y])
    return point[0], point[1]


def green_pixels(page, box: tuple[float, float, float, float]) -> int:  # noqa: ANN001
    x0, y0, x1, y1 = box
    shot = page.screenshot(clip={"x": x0 - 6, "y": y0 - 6, "width": x1 - x0 + 12, "height": y1 - y0 + 12})
    rgb = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
    return int(((rgb[..., 1] > 180) & (rgb[..., 0] < 100) & (rgb[..., 2] < 100)).sum())


def wait_for_green(page, box: tuple[float, float, float, float], present: bool) -> int:  # noqa: ANN001
    # Annotorious draws on a WebGL canvas on its next frame: look until the outline is (not) there.
    for _ in range(50):
        count = green_pixels(page, box)
        if (count > 100) == present:
            return count
        page.wait_for_timeout(100)
    raise AssertionError(f"outline {'not drawn' if present else 'still drawn'} ({count} green pixels)")


def test_draw_a_rectangle_save_show_hide_and_delete_it(site: Site, browser) -> None:  # noqa: ANN001
    page = logged_in_page(browser, site.base, "ana")
    open_viewer(page, site)
    page.fill("#new-class", "tumour margin")
    page.fill("#new-color", GREEN)
    page.click("button[data-tool=rectangle]")
    start, end = (420, 300), (640, 460)
    expected = (*to_image(page, *start), *to_image(page, *end))
    zoom = page.evaluate("slidebankViewer.world.getItemAt(0).viewportToImageZoom(slidebankViewer.viewport.getZoom(true))")
    tolerance = 3 / zoom  # three screen pixels, in level-0 pixels
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(530, 380, steps=5)
    page.mouse.move(*end, steps=5)
    page.mouse.up()
    page.wait_for_function("document.querySelector('#annotation-classes li[data-class=\"tumour margin\"]')")

    features = site.api(f"/api/slides/{site.slide_id}/annotations?class=tumour%20margin").json()["features"]
    assert len(features) == 1, features
    [feature] = features
    assert feature["geometry"]["type"] == "Polygon" and len(feature["geometry"]["coordinates"][0]) == 5
    assert feature["properties"]["classification"] == {"name": "tumour margin", "color": [0, 255, 0]}
    assert feature["slidebank"]["author"] == "ana" and feature["slidebank"]["color"] == GREEN
    assert all(abs(got - want) <= tolerance for got, want in zip(feature["slidebank"]["bbox"], expected, strict=True)), \
        (feature["slidebank"]["bbox"], expected, tolerance)

    page.reload()  # from the server now: drawn, and listed under its class
    page.wait_for_function(LOADED)
    page.wait_for_function(f"slidebankAnnotations.annotator.getAnnotationById('{feature['id']}')")
    listed = page.locator("#annotation-classes li[data-class='tumour margin']")
    assert listed.locator(".name").inner_text() == "tumour margin" and listed.locator(".count").inner_text() == "1"
    outline = (*start, *end)
    wait_for_green(page, outline, present=True)
    page.screenshot(path=ARTIFACTS / "viewer-annotation.png")

    listed.locator("input[type=checkbox]").uncheck()  # the class off: the outline goes
    wait_for_green(page, outline, present=False)
    listed.locator("input[type=checkbox]").check()
    wait_for_green(page, outline, present=True)

    page.mouse.click(530, 380)  # select it (pan tool), then delete it from the panel
    page.wait_for_selector("#annotation-selected:not([hidden])")
    assert "tumour margin" in page.locator("#annotation-selected").inner_text()
    page.click("#annotation-selected .delete")
    page.wait_for_function("!document.querySelector('#annotation-classes li[data-class=\"tumour margin\"]')")
    assert site.api(f"/api/slides/{site.slide_id}/annotations?class=tumour%20margin").json()["features"] == []
    wait_for_green(page, outline, present=False)
    assert page.locator("#annotation-error").inner_text() == ""
    page.context.close()


def test_tissue_heatmap_overlay_and_qc_numbers(site: Site, browser) -> None:  # noqa: ANN001
    page = browser.new_page(viewport={"width": 1400, "height": 900})  # anonymous: the dataset is open
    open_viewer(page, site)
    names = page.locator("#heatmaps li").evaluate_all("items => items.map(i => i.dataset.heatmap)")
    assert {"tissue", "blur"} <= set(names)
    assert page.locator("#qc-passed, #qc-flagged").count() == 1
    assert "Tissue area" in page.locator("#qc-values").inner_text()
    qc = site.api(f"/api/slides/{site.slide_id}").json()["qc"]
    assert page.locator("#qc-flagged" if qc["passed"] == 0 else "#qc-passed").is_visible()

    with page.expect_response(lambda r: r.url.endswith("/heatmaps/tissue.png")) as answer:
        page.check("#heatmaps input[value=tissue]")
    response = answer.value
    assert response.status == 200 and response.headers["content-type"] == "image/png"
    page.wait_for_function("document.querySelector('img.heatmap-overlay[data-heatmap=tissue]')?.naturalWidth > 0")
    # stretched over the level-0 extent its grid covers (the whole slide, where the API does not say)
    [tissue] = [h for h in site.api(f"/api/slides/{site.slide_id}/heatmaps").json() if h["name"] == "tissue"]
    slide = site.api(f"/api/slides/{site.slide_id}").json()
    extent = tissue.get("extent") or [slide["width"], slide["height"]]
    expected = page.evaluate("""([width, height]) => {
        const image = slidebankViewer.world.getItemAt(0);
        const rect = image.imageToViewportRectangle(0, 0, width, height);
        const r = slidebankViewer.viewport.viewportToViewerElementRectangle(rect);
        return [r.width, r.height]; }""", extent)
    overlay = page.locator("img.heatmap-overlay").bounding_box()
    assert overlay and abs(overlay["width"] - expected[0]) < 1 and abs(overlay["height"] - expected[1]) < 1
    page.uncheck("#heatmaps input[value=tissue]")
    assert page.locator("img.heatmap-overlay").count() == 0

    page.goto(f"{site.base}/view/{site.flagged_id}")
    page.wait_for_selector("#qc-flagged")
    assert "QC flagged" in page.locator("#qc-flagged").inner_text()
    assert "too little tissue" in page.locator("#qc-flagged").inner_text()
    assert page.locator("#qc-passed").count() == 0
    page.close()


def test_many_small_features_are_a_density_zoomed_out_and_outlines_zoomed_in(
    site: Site, browser, tmp_path: Path,  # noqa: ANN001
) -> None:
    generator = random.Random(11)
    features = []
    for _ in range(300):  # hexagons 10 px across: ~3 screen px at the whole-slide view
        cx, cy = generator.uniform(100, 2900), generator.uniform(100, 2300)
        ring = [[round(cx + 5 * math.cos(k * math.pi / 3), 2), round(cy + 5 * math.sin(k * math.pi / 3), 2)]
                for k in range(6)]
        classification = {"name": "nucleus", "color": [20, 120, 220]}
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
                         "properties": {"objectType": "detection", "classification": classification}})
    document = tmp_path / "nuclei.geojson"
    document.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    run_cli("annotations", "import", site.slide_id, str(document), home=site.home, check=True)

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    open_viewer(page, site)
    nuclei_drawn = ("slidebankAnnotations.annotator.getAnnotations()"
                    ".filter(a => slidebankAnnotations.state.features.get(a.id)?.slidebank.class === 'nucleus').length")
    page.wait_for_function("document.querySelector('#annotations-panel').dataset.mode === 'density'")
    assert page.locator("#viewer canvas.annotation-density").count() == 1
    assert page.evaluate(nuclei_drawn) == 0, "zoomed out, no nucleus is drawn as an outline"
    cells = page.evaluate("""(() => {
        const canvas = document.querySelector('canvas.annotation-density');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let filled = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) filled++;
        return filled; })()""")
    assert cells > 50, f"the density raster has {cells} filled cells"
    assert page.locator("#annotation-classes li[data-class=nucleus] .count").inner_text() == "300"
    page.screenshot(path=ARTIFACTS / "viewer-density.png")

    page.keyboard.press("4")  # 40×: a few dozen nuclei in view, each ~10 screen pixels
    page.wait_for_function("document.querySelector('#annotations-panel').dataset.mode === 'features'")
    page.wait_for_function(f"{nuclei_drawn} > 0")
    assert page.locator("#viewer canvas.annotation-density").count() == 0
    assert page.locator("#viewer canvas.a9s-gl-canvas").count() == 1  # Annotorious's layer draws them
    page.screenshot(path=ARTIFACTS / "viewer-outlines.png")
    page.close()


def overlay_blend(page) -> dict[str, float]:  # noqa: ANN001
    """How much of the densest annotation-density cells shows on screen over the slide, from two
    screenshots (with and without the density): per cell, the alpha `a` in C = a·O + (1 − a)·T."""
    layout = page.evaluate("""(() => {
        const canvas = document.querySelector('canvas.annotation-density');
        const r = canvas.getBoundingClientRect();
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        const cells = [];
        for (let i = 0; i < data.length; i += 4) if (data[i + 3]) cells.push({
            x: (i / 4) % canvas.width, y: Math.floor(i / 4 / canvas.width), rgb: [data[i], data[i + 1], data[i + 2]],
            alpha: data[i + 3] / 255 });
        const rect = (e) => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
        const viewer = document.querySelector('#viewer');
        const covered = [...viewer.querySelectorAll('.navigator, #scalebar')].filter((e) => e.offsetWidth).map(rect);
        return { box: [r.left, r.top, r.width / canvas.width, r.height / canvas.height], cells, covered,
                 viewer: rect(viewer) }; })()""")
    left, top, cell_w, cell_h = layout["box"]
    vx0, vy0, vx1, vy1 = layout["viewer"]
    usable = []
    for cell in sorted(layout["cells"], key=lambda c: -c["alpha"]):
        x0, y0 = round(left + (cell["x"] + 0.25) * cell_w), round(top + (cell["y"] + 0.25) * cell_h)
        x1, y1 = round(left + (cell["x"] + 0.75) * cell_w), round(top + (cell["y"] + 0.75) * cell_h)
        inside = x0 > vx0 + 2 and x1 < vx1 - 2 and y0 > vy0 + 60 and y1 < vy1 - 2  # not under the OSD buttons
        clear = all(x1 < a or x0 > c or y1 < b or y0 > d for a, b, c, d in layout["covered"])
        if inside and clear and x1 - x0 >= 4 and y1 - y0 >= 4:
            usable.append((x0, y0, x1, y1, np.array(cell["rgb"], float)))
        if len(usable) == 25:
            break
    assert len(usable) >= 10, f"only {len(usable)} dense cells in view"
    shot = lambda: np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(float)  # noqa: E731
    composite = shot()
    page.evaluate("document.querySelector('canvas.annotation-density').style.visibility = 'hidden'")
    page.wait_for_timeout(100)
    slide = shot()
    page.evaluate("document.querySelector('canvas.annotation-density').style.visibility = ''")
    alphas, texture, tissue, distance = [], [], [], []
    for x0, y0, x1, y1, overlay in usable:
        c, t = composite[y0:y1, x0:x1].reshape(-1, 3), slide[y0:y1, x0:x1].reshape(-1, 3)
        away = overlay - t
        alphas.append(float(((c - t) * away).sum() / max((away * away).sum(), 1e-9)))
        texture.append(float(c.std(axis=0).sum() / max(t.std(axis=0).sum(), 1e-9)))
        tissue.append(float((t.sum(axis=1) < 600).mean()))
        distance.append(float(np.abs(c - overlay).mean()))
    return {"alpha": float(np.median(alphas)), "alpha_max": max(alphas), "texture": float(np.median(texture)),
            "tissue": float(np.mean(tissue)), "distance_from_overlay": float(np.median(distance))}


def test_dense_annotations_leave_the_tissue_visible_and_follow_the_opacity(
    site: Site, browser, tmp_path: Path,  # noqa: ANN001
) -> None:
    # ~3,000 nucleus-sized features on the tissue (where a nuclei detector puts them), found on the thumbnail.
    slide = site.api(f"/api/slides/{site.slide_id}").json()
    thumbnail = np.asarray(Image.open(io.BytesIO(site.api(f"/api/slides/{site.slide_id}/thumbnail.jpg").content))
                           .convert("RGB")).astype(int)
    ys, xs = np.nonzero(thumbnail.sum(axis=2) < 600)
    assert len(xs) > 100, "the thumbnail shows no tissue"
    scale = slide["width"] / thumbnail.shape[1]
    generator = random.Random(5)
    features = []
    for _ in range(3000):
        k = generator.randrange(len(xs))
        cx = (xs[k] + generator.random()) * scale
        cy = (ys[k] + generator.random()) * scale
        ring = [[round(cx + 5 * math.cos(a * math.pi / 3), 2), round(cy + 5 * math.sin(a * math.pi / 3), 2)]
                for a in range(6)]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
                         "properties": {"objectType": "detection",
                                        "classification": {"name": "dense nuclei", "color": [0, 255, 0]}}})
    document = tmp_path / "dense.geojson"
    document.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    run_cli("annotations", "import", site.slide_id, str(document), home=site.home, check=True)

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    open_viewer(page, site)
    page.wait_for_function("document.querySelector('#annotations-panel').dataset.mode === 'density'")
    page.wait_for_timeout(500)  # no reload pending
    shown = overlay_blend(page)
    page.screenshot(path=ARTIFACTS / "viewer-dense-annotations.png")
    assert shown["tissue"] > 0.8, f"the densest cells are not over tissue: {shown}"
    # See-through: the tissue beneath keeps most of its texture, and the pixels are not the overlay's colour.
    assert 0.1 < shown["alpha"] < 0.5, shown
    assert shown["texture"] > 0.45, shown
    assert shown["distance_from_overlay"] > 30, shown

    slider = page.locator("#overlay-opacity")
    assert slider.is_visible()
    slider.fill("1")
    full = overlay_blend(page)
    slider.fill("0.3")
    faint = overlay_blend(page)
    assert full["alpha_max"] < 0.7, f"at full opacity the density hides the tissue: {full}"  # never opaque
    assert faint["alpha"] < shown["alpha"] < full["alpha"], (faint, shown, full)
    assert abs(faint["alpha"] / full["alpha"] - 0.3) < 0.1, (faint, full)  # the slider scales the blend
    # …and the heatmaps with it.
    page.check("#heatmaps input[value=tissue]")
    page.wait_for_function("document.querySelector('img.heatmap-overlay[data-heatmap=tissue]')?.naturalWidth > 0")
    assert page.evaluate("getComputedStyle(document.querySelector('img.heatmap-overlay')).opacity") == "0.3"
    page.close()


def test_qc_panel_words_agree_with_the_facts_and_the_heatmap_legends(site: Site, browser) -> None:  # noqa: ANN001
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    open_viewer(page, site)
    qc = site.api(f"/api/slides/{site.slide_id}").json()["qc"]
    legends = {h["name"]: h["legend"] for h in site.api(f"/api/slides/{site.slide_id}/heatmaps").json()}

    def legend(name: str) -> str:  # what is written under the heatmap's name
        item = page.locator(f"#heatmaps li[data-heatmap={name}]")
        return " ".join(item.inner_text().removeprefix(item.locator("label").inner_text()).split())

    # The blur heatmap's legend describes its scale (from its low end to its high end), never counts.
    blur_legend = legend("blur")
    assert blur_legend == f"{legends['blur']['0']} ← → {legends['blur']['1']}" == "sharp ← → out of focus", blur_legend
    tissue_legend = legend("tissue")
    assert tissue_legend == f"shaded: {legends['tissue']['1']}", tissue_legend
    assert not re.search(r"\d", blur_legend + tissue_legend), "a legend reads as numbers of tiles"

    # The fraction out of focus, stated once, in the facts' own terms: tissue tiles, with the counts.
    tiles, blurred = int(qc["focus_tiles"]), int(qc["blurred_tiles"])
    row = page.locator("xpath=//dl[@id='qc-values']/dt[.='Out of focus']/following-sibling::dd[1]").inner_text()
    match = re.fullmatch(rf"{blurred} of {tiles} tissue tiles \((?:< )?([\d.]+) %\)", row)
    assert match, row
    assert abs(float(match.group(1)) - qc["blur_fraction"] * 100) <= 0.1, (row, qc)
    assert blurred == round(qc["blur_fraction"] * tiles)
    # Said once: the row and the legend's end (a QC flag, when there is one, quotes the server's words).
    said = page.locator("#qc-values").inner_text() + page.locator("#heatmaps").inner_text()
    assert said.lower().count("out of focus") == 2, said
    tissue = page.locator("xpath=//dl[@id='qc-values']/dt[.='Tissue fraction']/following-sibling::dd[1]")
    assert tissue.inner_text().endswith("% of the slide")
    page.close()


def test_unknown_pixel_size_has_no_scale_bar_and_says_so(site: Site, browser) -> None:  # noqa: ANN001
    described = site.api(f"/api/slides/{site.unknown_size_id}").json()
    assert described["pixel_size_known"] is False and described["mpp_x"] is None and described["mpp_y"] is None
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{site.base}/view/{site.unknown_size_id}")
    page.wait_for_function(LOADED)
    page.wait_for_selector("#qc-values")
    assert page.locator("#scalebar").is_hidden()
    page.keyboard.press("4")  # zooming does not bring it back
    page.wait_for_timeout(600)
    assert page.locator("#scalebar").is_hidden()
    assert "pixel size unknown" in page.locator("#slide-info").inner_text().lower()
    info = page.locator("#slide-info dl").first.inner_text()
    assert re.search(r"Pixel size\s+unknown", info), info
    assert "pixel size unknown" in page.locator("#quality-panel").inner_text().lower()
    measured = page.locator("#qc-values").inner_text() + info
    assert "Tissue area" not in measured
    assert not re.search(r"\d\s*(µm|mm)", measured), measured  # nothing measured in µm or mm²
    page.screenshot(path=ARTIFACTS / "viewer-unknown-pixel-size.png")

    page.goto(f"{site.base}/view/{site.slide_id}")  # a slide with a known pixel size keeps its scale bar
    page.wait_for_function(LOADED)
    page.wait_for_selector("#qc-values")
    assert page.locator("#scalebar").is_visible()
    assert re.fullmatch(r"\d+(\.\d+)? (µm|mm)", page.locator("#scalebar span").inner_text())
    assert "pixel size unknown" not in page.locator("#details").inner_text().lower()
    assert re.search(r"Pixel size\s+0\.\d{4} × 0\.\d{4} µm", page.locator("#slide-info dl").first.inner_text())
    assert "Tissue area" in page.locator("#qc-values").inner_text()
    page.close()


def test_jobs_page_shows_jobs_and_follows_a_new_one(site: Site, browser) -> None:  # noqa: ANN001
    admin = logged_in_page(browser, site.base, "ada")  # the ingest's QC job is the operator's: admins see it
    admin.click("a.nav[href='/jobs']")
    admin.wait_for_selector("#jobs tbody tr")
    row = admin.locator("#jobs tbody tr").filter(has=admin.locator(f"li[data-slide-id='{site.slide_id}']")).first
    assert row.get_attribute("data-state") == "done"
    assert "qc" in row.inner_text() and "operator" in row.inner_text()
    row.locator(f"a[href='/view/{site.slide_id}']").click()
    admin.wait_for_url(f"**/view/{site.slide_id}")
    admin.context.close()

    researcher = logged_in_page(browser, site.base, "ana")
    open_viewer(researcher, site)
    researcher.select_option("#run-algorithm select", "qc")
    researcher.click("#run-algorithm button")
    researcher.click("#run-algorithm a")
    researcher.wait_for_url("**/jobs")
    researcher.wait_for_selector("#jobs tbody tr")
    assert researcher.locator("#jobs tbody tr").count() == 1  # one's own jobs only
    # the page asks again every 2 s until the job is over
    researcher.wait_for_function("document.querySelector('#jobs tbody tr').dataset.state === 'done'", timeout=60_000)
    assert researcher.locator("#jobs tbody tr td.progress").inner_text().strip() == "1 / 1"
    researcher.context.close()
