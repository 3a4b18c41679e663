"""The web app in a real headless Chromium (Debian's), driven by Playwright, against a real server."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import ARTIFACTS, CHROMIUM, json_lines, open_dataset, run_cli, running_server

STEWARD_PASSWORD = "slides are data"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (make system-deps)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, aperio_slide, generic_slide) -> Iterator[tuple[str, str]]:  # noqa: ANN001
    home = tmp_path_factory.mktemp("browser") / "node"
    run_cli("init", home=home, check=True)
    open_dataset(home, "breast")
    open_dataset(home, "lung")
    [slide] = json_lines(run_cli("ingest", str(aperio_slide.path), "--json", "--dataset", "breast",
                                 home=home, check=True).stdout)
    run_cli("ingest", str(generic_slide.path), "--json", "--dataset", "lung", home=home, check=True)
    run_cli("users", "add", "sam", "--role", "data_steward", "--password-stdin", home=home, check=True,
            stdin=STEWARD_PASSWORD + "\n")
    for name, role in (("rob", "researcher"), ("dana", "dac_member")):
        run_cli("users", "add", name, "--role", role, "--password-stdin", home=home, check=True,
                stdin=STEWARD_PASSWORD + "\n")
    run_cli("datasets", "create", "private", "--policy", "Controlled: tumour research only", "--steward", "sam",
            "--committee", "dana", home=home, check=True)
    private = home.parent / "private.svs"
    run_cli("synth", str(private), "--width", "2400", "--height", "1800", home=home, check=True)
    run_cli("ingest", str(private), "--dataset", "private", "--json", home=home, check=True)
    request = run_cli("access", "request", "--user", "sam", "--dataset", "lung", "--purpose", "QC study",
                      home=home, check=True).stdout.strip()
    run_cli("access", "reject", request, "--reason", "lung is open data already", home=home, check=True)
    with running_server(home) as base:
        yield base, slide["slide_id"]


def test_catalog_search_open_zoom_and_pan_a_slide(site: tuple[str, str], browser) -> None:  # noqa: ANN001
    base, slide_id = site
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    tiles: list[tuple[str, int]] = []
    page.on("response", lambda r: tiles.append((r.url, r.status)) if "_files/" in r.url else None)

    page.goto(f"{base}/")
    page.wait_for_selector(".card")
    assert page.locator(".card").count() == 2  # the private dataset's slide is not shown to anonymous
    page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("fieldset[data-facet=dataset] .count").all_inner_texts() == ["1", "1"]
    page.fill("#text", slide_id)
    page.press("#text", "Enter")
    page.wait_for_function("document.querySelectorAll('.card').length === 1")
    assert page.locator(".card").get_attribute("data-slide-id") == slide_id
    page.fill("#text", "")
    page.press("#text", "Enter")
    page.wait_for_function("document.querySelectorAll('.card').length === 2")
    page.locator("fieldset[data-facet=dataset] input[value=breast]").check()
    page.wait_for_function("document.querySelectorAll('.card').length === 1")
    assert page.locator(".card").get_attribute("data-slide-id") == slide_id
    page.screenshot(path=ARTIFACTS / "catalog.png")

    page.locator(".card a").click()
    page.wait_for_url(f"**/view/{slide_id}")
    page.wait_for_function("window.slidebankViewer && window.slidebankViewer.world.getItemCount() === 1 "
                           "&& window.slidebankViewer.world.getItemAt(0).getFullyLoaded()")
    whole_slide_levels = _levels(tiles)
    page.locator("button[data-magnification='20']").click()
    page.wait_for_function("document.querySelector('#magnification').textContent === '20.0×'")
    center = "window.slidebankViewer.viewport.getCenter(true)"
    start = page.evaluate(center)
    page.keyboard.press("ArrowRight")  # steers the slide even though the 20× button has the focus
    page.wait_for_function(f"{center}.x > {start['x']} + 0.005")
    panned = page.evaluate(center)
    page.mouse.move(600, 450)
    page.mouse.down()
    page.mouse.move(350, 300, steps=8)
    page.mouse.up()
    page.wait_for_function(f"{center}.x > {panned['x']} + 0.01 && {center}.y > {panned['y']} + 0.01")
    page.keyboard.press("4")
    page.wait_for_function("document.querySelector('#magnification').textContent === '40.0×'")
    page.wait_for_function("window.slidebankViewer.world.getItemAt(0).getFullyLoaded()", timeout=15_000)
    page.screenshot(path=ARTIFACTS / "viewer-40x.png")

    assert tiles and all(status == 200 for _, status in tiles), [t for t in tiles if t[1] != 200]
    assert len(_levels(tiles)) > len(whole_slide_levels) >= 1, "zooming in must fetch finer levels"
    assert re.fullmatch(r"\d+(\.\d+)? (µm|mm)", page.locator("#scalebar span").inner_text())
    assert "Provenance" in page.locator("#details").inner_text()
    canvas = np.asarray(Image.open(io.BytesIO(page.locator("#viewer canvas").first.screenshot())).convert("RGB"))
    tissue = (canvas.astype(int).sum(axis=2) < 600).mean()  # pink/purple stain, not white glass
    assert tissue > 0.05 and canvas.std() > 10, f"canvas looks blank ({tissue:.1%} tissue)"
    page.close()


def test_logging_in_shows_the_datasets_one_stewards(site: tuple[str, str], browser) -> None:  # noqa: ANN001
    base, _ = site
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{base}/")
    page.wait_for_function("document.querySelectorAll('.card').length === 2")
    page.fill("#login input[name=name]", "sam")
    page.fill("#login input[name=password]", "not the password")
    page.click("#login button")
    page.wait_for_function("document.querySelector('#login-error').textContent !== ''")
    page.fill("#login input[name=password]", STEWARD_PASSWORD)
    page.click("#login button")
    page.wait_for_selector("#who")
    page.wait_for_function("document.querySelectorAll('.card').length === 3")
    page.click(".notices summary")
    assert "rejected: lung is open data already" in page.locator("#notices").inner_text()
    tiles: list[tuple[str, int]] = []
    page.on("response", lambda r: tiles.append((r.url, r.status)) if "_files/" in r.url else None)
    page.locator("fieldset[data-facet=dataset] input[value=private]").check()
    page.wait_for_function("document.querySelectorAll('.card').length === 1")
    page.locator(".card a").click()
    page.wait_for_function("window.slidebankViewer && window.slidebankViewer.world.getItemCount() === 1 "
                           "&& window.slidebankViewer.world.getItemAt(0).getFullyLoaded()")
    assert tiles and all(status == 200 for _, status in tiles)
    page.click("#logout")  # the page reloads without the session: the private slide is gone
    page.wait_for_function("document.body.textContent.includes('No such slide')")
    page.close()


def log_in(page, base: str, name: str) -> None:  # noqa: ANN001
    page.goto(f"{base}/")
    page.fill("#login input[name=name]", name)
    page.fill("#login input[name=password]", STEWARD_PASSWORD)
    page.click("#login button")
    page.wait_for_selector("#who")


def test_researcher_requests_access_and_the_dac_approves_in_the_app(site: tuple[str, str], browser) -> None:  # noqa: ANN001
    base, _ = site
    researcher = browser.new_context().new_page()
    log_in(researcher, base, "rob")
    researcher.wait_for_function("document.querySelectorAll('.card').length === 2")
    private = researcher.locator("#access-panel li[data-dataset=private]")
    assert "tumour research only" in private.inner_text()
    private.locator("input[name=purpose]").fill("Train a tumour detector")
    private.locator("button").click()
    researcher.wait_for_function("document.querySelector('#access-panel li[data-dataset=private]')"
                                 ".textContent.includes('access requested')")

    committee = browser.new_context().new_page()
    log_in(committee, base, "dana")
    decision = committee.locator("#access-panel .decisions li").first
    assert "rob → private: Train a tumour detector" in decision.inner_text()
    decision.locator("button.approve").click()
    committee.wait_for_function("!document.querySelector('#access-panel .decisions li')")

    researcher.reload()
    researcher.wait_for_function("document.querySelectorAll('.card').length === 3")
    researcher.click(".notices summary")
    assert "approved until" in researcher.locator("#notices").inner_text()
    researcher.context.close()
    committee.context.close()


def test_unknown_slide_page_is_a_404(site: tuple[str, str], browser) -> None:  # noqa: ANN001
    base, _ = site
    page = browser.new_page()
    response = page.goto(f"{base}/view/does-not-exist")
    assert response is not None and response.status == 404
    assert "No such slide" in page.content()
    page.close()


def _levels(tiles: list[tuple[str, int]]) -> set[int]:
    return {int(m.group(1)) for url, _ in tiles if (m := re.search(r"_files/(\d+)/", url))}


def test_pages_work_under_their_content_security_policy(site: tuple[str, str], browser) -> None:  # noqa: ANN001
    """With the policy enforced (no bypass): the viewer draws tiles, the API docs render, nothing is
    blocked and nothing is fetched from another origin."""
    import time

    base, slide_id = site
    page = browser.strict_page(viewport={"width": 1200, "height": 800})
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))

    def until(expression: str, seconds: float = 30) -> None:  # polled from outside: the page forbids eval
        deadline = time.monotonic() + seconds
        while not page.evaluate(expression):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)

    response = page.goto(f"{base}/view/{slide_id}")
    assert response is not None and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    until("() => !!(window.slidebankViewer && window.slidebankViewer.world.getItemCount() === 1 "
          "&& window.slidebankViewer.world.getItemAt(0).getFullyLoaded())")
    canvas = np.asarray(Image.open(io.BytesIO(page.locator("#viewer canvas").first.screenshot())).convert("RGB"))
    assert canvas.std() > 10, "the viewer drew nothing"
    for docs, ready in (("/docs", "() => document.querySelectorAll('.opblock').length > 10"),
                        ("/redoc", "() => document.querySelectorAll('[data-section-id]').length > 10")):
        page.goto(f"{base}{docs}")
        until(ready)
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
    assert all(url.startswith(base) or url.startswith(("data:", "blob:")) for url in requests), \
        [u for u in requests if not u.startswith(base)]
    page.close()
