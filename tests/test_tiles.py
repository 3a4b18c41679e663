"""Deep Zoom and IIIF against a real `slidebank serve` process, on a synthetic SVS and the IIIF test image."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from conftest import json_lines, open_dataset, open_wsidicom, run_cli, running_server
from databases import open_node

# The official validator's test image: 10×10 squares of 100 px in colours it knows.
VALIDATOR_ID = "67352ccc-d1b0-11e1-89ae-279075081939"


def write_validator_image(path: Path) -> None:
    from iiif_validator.validator import ValidationInfo

    pixels = np.zeros((1000, 1000, 3), np.uint8)
    for x, column in enumerate(ValidationInfo().colorInfo):
        for y, colour in enumerate(column):
            pixels[y * 100 : (y + 1) * 100, x * 100 : (x + 1) * 100] = colour
    per_cm = 10_000 / 0.5
    tifffile.imwrite(
        path, pixels, tile=(256, 256), compression="zlib", photometric="rgb",
        resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
    )


class Served:
    def __init__(self, base: str, home: Path, slide_id: str, source: Path) -> None:
        self.base, self.home, self.slide_id, self.source = base, home, slide_id, source
        self.http = httpx.Client(base_url=base, timeout=30)

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.http.get(path, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, aperio_slide) -> Iterator[Served]:  # noqa: ANN001
    home = tmp_path_factory.mktemp("tiles") / "node"
    run_cli("init", home=home, check=True)
    open_dataset(home, "public")
    [ingested] = json_lines(
        run_cli("ingest", str(aperio_slide.path), "--json", "--dataset", "public", home=home, check=True).stdout
    )
    test_image = home.parent / f"{VALIDATOR_ID}.tiff"
    write_validator_image(test_image)
    run_cli("ingest", str(test_image), "--slide-id", VALIDATOR_ID, "--json", "--dataset", "public", home=home,
            check=True)
    with running_server(home) as base:
        yield Served(base, home, ingested["slide_id"], aperio_slide.path)


def decode(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, (response.url, response.status_code, response.text[:200])
    return Image.open(io.BytesIO(response.content))


def dzi_geometry(served: Served) -> tuple[int, int, int, int]:
    response = served.get(f"/slides/{served.slide_id}.dzi")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    image = ET.fromstring(response.text)
    size = image.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert image.get("Overlap") == "0" and size is not None
    width, height, tile = int(size.get("Width", 0)), int(size.get("Height", 0)), int(image.get("TileSize", 0))
    return width, height, tile, math.ceil(math.log2(max(width, height)))


def test_deepzoom_serves_stored_tiles_byte_for_byte(served: Served) -> None:
    width, height, tile, top = dzi_geometry(served)
    node = open_node(served.home)
    with open_wsidicom(node, served.slide_id) as stored, openslide.OpenSlide(served.source) as original:
        assert (width, height) == original.dimensions
        assert tile == stored.tile_size.width
        for level, (col, row) in ((top, (1, 1)), (top - 1, (0, 1))):
            response = served.get(f"/slides/{served.slide_id}_files/{level}/{col}_{row}.jpeg")
            assert response.content == stored.read_encoded_tile(top - level, (col, row)), "not the stored frame"
        ours = np.asarray(decode(served.get(f"/slides/{served.slide_id}_files/{top}/1_1.jpeg")).convert("RGB"))
        theirs = np.asarray(original.read_region((tile, tile), 0, (tile, tile)).convert("RGB"))
    node.close()
    assert np.array_equal(ours, theirs), "copied SVS tiles must decode to the original pixels"


def test_every_deepzoom_level_has_tiles_of_the_right_size(served: Served) -> None:
    width, height, tile, top = dzi_geometry(served)
    for level in range(top + 1):
        scale = 2 ** (top - level)
        level_w, level_h = math.ceil(width / scale), math.ceil(height / scale)
        cols, rows = math.ceil(level_w / tile), math.ceil(level_h / tile)
        last = decode(served.get(f"/slides/{served.slide_id}_files/{level}/{cols - 1}_{rows - 1}.jpeg"))
        assert last.size == (level_w - (cols - 1) * tile, level_h - (rows - 1) * tile), level
        assert decode(served.get(f"/slides/{served.slide_id}_files/{level}/0_0.png")).format == "PNG"
        beyond = served.get(f"/slides/{served.slide_id}_files/{level}/{cols}_0.jpeg")
        assert beyond.status_code == 404


def test_iiif_tiles_from_info_json_are_the_stored_tiles(served: Served) -> None:
    info = served.get(f"/iiif/3/{served.slide_id}/info.json").json()
    width, height, tile, top = dzi_geometry(served)
    [tiles] = info["tiles"]
    assert (info["width"], info["height"], tiles["width"]) == (width, height, tile)
    assert info["profile"] == "level2" and info["id"].endswith(f"/iiif/3/{served.slide_id}")
    for scale in tiles["scaleFactors"]:
        span = tile * scale
        col = 1 if span < width else 0  # the second column where there is one: x is not 0
        region_w, region_h = min(span, width - col * span), min(span, height)
        region = f"{col * span},0,{region_w},{region_h}"
        iiif = served.get(f"/iiif/3/{served.slide_id}/{region}/{math.ceil(region_w / scale)},/0/default.jpg")
        level = top - int(math.log2(scale))
        deepzoom = served.get(f"/slides/{served.slide_id}_files/{level}/{col}_0.jpeg")
        assert iiif.status_code == 200 and iiif.content == deepzoom.content, f"scale {scale} was re-encoded"


def test_iiif_region_matches_the_original_slide(served: Served) -> None:
    region, size = (700, 500, 1200, 900), (600, 450)
    response = served.get(f"/iiif/3/{served.slide_id}/{','.join(map(str, region))}/{size[0]},/0/default.png")
    ours = np.asarray(decode(response).convert("RGB")).astype(float)
    with openslide.OpenSlide(served.source) as original:
        full = original.read_region(region[:2], 0, region[2:]).convert("RGB")
    theirs = np.asarray(full.resize(size, Image.Resampling.BOX)).astype(float)
    mse = float(np.mean((ours - theirs) ** 2))
    assert 10 * math.log10(255**2 / mse) > 30
    gray = decode(served.get(f"/iiif/3/{served.slide_id}/full/!200,200/90/gray.jpg"))
    assert gray.mode == "L" and max(gray.size) == 200 and gray.size[0] < gray.size[1]  # landscape slide turned


def test_fast_path_answers_exactly_like_the_documented_route(served: Served) -> None:
    """The first read of a slide in a worker goes through FastAPI, later ones through the ASGI fast path."""
    _, _, _, top = dzi_geometry(served)
    path = f"/slides/{served.slide_id}_files/{top}/2_1.jpeg"
    answers = [served.get(path) for _ in range(3)]
    keep = ("content-type", "etag", "cache-control", "last-modified", "access-control-allow-origin", "content-length")
    assert len({(a.status_code, a.content, tuple(a.headers.get(h) for h in keep)) for a in answers}) == 1
    assert served.get(path, headers={"If-None-Match": answers[0].headers["etag"]}).status_code == 304


def test_responses_are_cacheable_and_conditional(served: Served) -> None:
    path = f"/slides/{served.slide_id}_files/5/0_0.jpeg"
    first = served.get(path)
    assert first.headers["content-type"] == "image/jpeg"
    assert "max-age" in first.headers["cache-control"] and first.headers["last-modified"]
    again = served.get(path, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and not again.content
    other = served.get(f"/slides/{served.slide_id}_files/5/0_0.png")
    assert other.headers["etag"] != first.headers["etag"]
    info = served.get(f"/iiif/3/{served.slide_id}/info.json", headers={"Accept": "application/ld+json"})
    assert info.headers["access-control-allow-origin"] == "*"
    assert info.headers["content-type"].startswith("application/ld+json")
    redirect = served.get(f"/iiif/3/{served.slide_id}")
    assert redirect.status_code == 303 and redirect.headers["location"].endswith("/info.json")
    overview = decode(served.get(f"/api/slides/{served.slide_id}/overview.jpg"))
    assert max(overview.size) == 1024


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/slides/{id}_files/99/0_0.jpeg", 404),
        ("/slides/{id}_files/3/-1_0.jpeg", 404),
        ("/slides/{id}_files/3/0_0.gif", 404),
        ("/slides/{id}_files/3/99999999999999999999_0.jpeg", 404),
        ("/slides/no-such-slide.dzi", 404),
        ("/slides/..%2F..%2Fetc%2Fpasswd.dzi", 404),
        ("/iiif/3/no-such-slide/info.json", 404),
        ("/iiif/3/{id}/99999,0,10,10/max/0/default.jpg", 400),
        ("/iiif/3/{id}/0,0,0,10/max/0/default.jpg", 400),
        ("/iiif/3/{id}/full/max/0/default.exe", 400),
        ("/iiif/3/{id}/full/max/0/sepia.jpg", 400),
        ("/iiif/3/{id}/full/max/720/default.jpg", 400),
        ("/iiif/3/{id}/full/100000,100000/0/default.jpg", 400),
        ("/iiif/3/{id}/full/^100000,100000/0/default.jpg", 400),
        ("/iiif/3/{id}/full/pct:0/0/default.jpg", 400),
        ("/iiif/3/{id}/x,y,w,h/max/0/default.jpg", 400),
        ("/iiif/3/{id}/full/max/0/default", 400),
    ],
)
def test_bad_requests_get_clean_errors(served: Served, path: str, status: int) -> None:
    response = served.get(path.replace("{id}", served.slide_id))
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/json"


def test_official_iiif_validator_passes_at_level_2(served: Served) -> None:
    validator = Path(sys.executable).with_name("iiif-validate.py")
    host = served.base.removeprefix("http://")
    result = subprocess.run(
        [sys.executable, str(validator), "-s", host, "-p", "iiif/3", "-i", VALIDATOR_ID,
         "--version=3.0", "--level", "2"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "Done (" in report and ", 0 failures)" in report
