"""The Python SDK (`slidebank.client`) against a real server and on a local node: the OpenSlide
vocabulary, stored pixels exactly, typed errors, retries, grants and audit as everywhere else."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import json_lines, open_dataset, run_cli, running_server
from databases import open_node, point_environment_at
from slidebank.client import (
    BadRequest,
    Client,
    NoAccess,
    NotFound,
    RemoteSlide,
    ServerUnreachable,
    TokenRejected,
)
from slidebank.slides.reader import StoredSlide
from slidebank.slides.stored import open_stored_slide
from slidebank.synth import modalities

PEOPLE = {"alice": "researcher", "bob": "researcher", "dac": "dac_member"}


@dataclass
class Site:
    base: str
    home: Path
    slides: dict[str, str]  # kind -> slide id: "jpeg" (controlled), "jpeg2000" (controlled), "open"
    tokens: dict[str, str]

    def client(self, who: str | None = "alice", **options: object) -> Client:
        return Client(self.base, self.tokens[who] if who else None, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, aperio_slide, generic_slide) -> Iterator[Site]:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("sdk")
    home = folder / "node"
    run_cli("init", home=home, check=True)
    for name, role in PEOPLE.items():
        run_cli("users", "add", name, "--role", role, home=home, check=True)
    run_cli("datasets", "create", "restricted", "--policy", "Apply to the DAC", "--committee", "dac",
            home=home, check=True)
    open_dataset(home, "public")
    jpeg2000 = modalities.write_aperio_j2k_svs(folder / "j2k.svs", colorspace="rgb", width=700, height=500,
                                               tile=128, levels=2, mpp=0.5)
    slides = {}
    for kind, path, dataset in (("jpeg", aperio_slide.path, "restricted"), ("jpeg2000", jpeg2000, "restricted"),
                                ("open", generic_slide.path, "public")):
        [outcome] = json_lines(run_cli("ingest", str(path), "--dataset", dataset, "--json", "--no-qc",
                                       home=home, check=True).stdout)
        slides[kind] = outcome["slide_id"]
    tokens = {name: run_cli("tokens", "create", name, home=home, check=True).stdout.strip().splitlines()[-1]
              for name in PEOPLE}
    request = run_cli("access", "request", "--user", "alice", "--dataset", "restricted", "--purpose", "Train a model",
                      home=home, check=True).stdout.strip()
    until = (date.today() + timedelta(days=30)).isoformat()
    run_cli("access", "approve", request, "--expires", until, "--as", "dac", home=home, check=True)
    with running_server(home) as base:
        yield Site(base, home, slides, tokens)


@pytest.fixture(scope="module")
def stored(site: Site) -> Iterator[dict[str, StoredSlide]]:
    """The node's own reader of each slide: what the SDK must reproduce exactly."""
    node = open_node(site.home)
    readers = {kind: open_stored_slide(node.catalog, node.open_blob, slide) for kind, slide in site.slides.items()}
    yield readers
    for reader in readers.values():
        reader.close()
    node.close()


def random_regions(slide: StoredSlide, count: int, seed: int) -> Iterator[tuple[tuple[int, int], int, tuple[int, int]]]:
    """Regions at every level, across tile edges, the slide's edges and beyond."""
    rng = np.random.default_rng(seed)
    width, height = slide.dimensions
    for _ in range(count):
        level = int(rng.integers(0, slide.level_count))
        location = (int(rng.integers(-200, width + 50)), int(rng.integers(-200, height + 50)))
        size = (int(rng.integers(1, 600)), int(rng.integers(1, 600)))
        yield location, level, size


@pytest.mark.parametrize("kind", ["jpeg", "jpeg2000", "open"])
def test_read_region_is_the_stored_pixels_exactly(site: Site, stored: dict[str, StoredSlide], kind: str) -> None:
    reference = stored[kind]
    with site.client(cache_mb=0 if kind == "jpeg" else 64) as bank, bank.open(site.slides[kind]) as slide:
        assert isinstance(slide, RemoteSlide)
        for location, level, size in random_regions(reference, 40, seed=len(kind)):
            remote = slide.read_region(location, level, size)
            assert isinstance(remote, Image.Image) and remote.mode == "RGBA"
            local = reference.read_region(location, level, size)
            assert np.array_equal(np.asarray(remote), np.asarray(local)), (kind, location, level, size)
            assert np.array_equal(slide.read_region_array(location, level, size),
                                  reference.read_region_array(location, level, size))


def test_the_openslide_vocabulary(site: Site, stored: dict[str, StoredSlide]) -> None:
    reference = stored["jpeg"]
    with site.client() as bank, bank.open(site.slides["jpeg"]) as slide:
        assert slide.dimensions == reference.dimensions == (3000, 2400)
        assert slide.level_count == reference.level_count > 1
        assert slide.level_dimensions == reference.level_dimensions
        assert slide.level_downsamples == reference.level_downsamples
        assert slide.properties == reference.properties and float(slide.properties["openslide.mpp-x"]) > 0
        assert slide.mpp == reference.mpp
        assert slide.associated_images == {}  # labels and macros are not stored
        for downsample in (0.5, 1, 1.9, 2, 3.5, 64):
            assert slide.get_best_level_for_downsample(downsample) == reference.get_best_level_for_downsample(downsample)
        assert np.array_equal(np.asarray(slide.get_thumbnail((300, 300))), np.asarray(reference.get_thumbnail((300, 300))))
        with pytest.raises(IndexError):
            slide.read_region((0, 0), slide.level_count, (10, 10))
        with pytest.raises(ValueError):
            slide.read_region((0, 0), 0, (-1, 10))


def test_large_regions_are_fetched_in_concurrent_batches_and_cached(site: Site, stored: dict[str, StoredSlide]) -> None:
    reference = stored["jpeg"]
    with site.client(workers=4, progress=True) as bank, bank.open(site.slides["jpeg"]) as slide:
        whole = slide.read_region_array((0, 0), 0, reference.dimensions)  # 12 x 10 frames: several batches
        assert np.array_equal(whole, reference.read_region_array((0, 0), 0, reference.dimensions))
        assert bank.cache.current_bytes >= 100 * 240 * 240 * 3
        with bank.open(site.slides["jpeg"]) as again:  # the cache is the client's, shared between opens
            assert np.array_equal(again.read_region_array((300, 300), 0, (256, 256)), whole[300:556, 300:556])


def test_catalog_annotations_qc_and_jobs(site: Site) -> None:
    with site.client() as bank:
        assert bank.me()["name"] == "alice"
        found = bank.search(dataset=["restricted"])
        assert found["total"] == 2 and {i["slide_id"] for i in found["items"]} == {site.slides["jpeg"], site.slides["jpeg2000"]}
        assert {s["slide_id"] for s in bank.slides()} == set(site.slides.values())
        assert {s["slide_id"] for s in bank.slides(dataset="public")} == {site.slides["open"]}
        with pytest.raises(BadRequest, match="cannot read condition"):
            bank.search(where="qc.blur_fraction <<< 1")
        slide = site.slides["jpeg"]
        square = {"type": "Polygon", "coordinates": [[[100, 100], [300, 100], [300, 300], [100, 300], [100, 100]]]}
        bank._transport.post_json(f"/api/slides/{slide}/annotations", {
            "type": "Feature", "geometry": square, "properties": {"classification": {"name": "Tumor"}}})
        inside = bank.annotations(slide, bbox=(0, 0, 500, 500), classes=["Tumor"])
        assert [f["geometry"] for f in inside["features"]] == [square]
        assert bank.annotations(slide, bbox=(1000, 1000, 1100, 1100))["features"] == []
        assert bank.annotations(slide, classes=["Stroma"])["features"] == []
        job = bank.run("qc", slides=[slide], wait=True, timeout_s=300)
        assert job["state"] == "done", job
        assert 0 < bank.qc(slide)["tissue_fraction"] <= 1
        assert job["id"] in {j["id"] for j in bank.jobs()}
    with site.client("bob") as bob:
        with pytest.raises(NotFound):  # someone else's job is not even there for him
            bob._transport.post_json(f"/api/jobs/{job['id']}/cancel")
        with pytest.raises(NoAccess):
            bob._transport.post_json("/api/users/alice/disable")


def test_typed_errors_say_what_is_wrong(site: Site) -> None:
    with site.client("bob") as bob:  # no grant: a restricted slide answers like a missing one
        for slide in (site.slides["jpeg"], "sb-000000000000"):
            with pytest.raises(NotFound, match="may not read it"):
                bob.open(slide)
        assert bob.open(site.slides["open"]).dimensions == (1500, 1100)
    with Client(site.base, "sbk_" + "x" * 43) as forged, pytest.raises(TokenRejected, match="expired or been revoked"):
        forged.me()
    with Client(site.base) as anonymous:
        assert {s["slide_id"] for s in anonymous.slides()} == {site.slides["open"]}
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", retries=2) as nowhere, pytest.raises(ServerUnreachable, match="cannot reach"):
        nowhere.me()


def test_a_revoked_token_stops_the_next_read(site: Site) -> None:
    token = run_cli("tokens", "create", "alice", "--label", "revoke-me", home=site.home, check=True).stdout.strip()
    with Client(site.base, token.splitlines()[-1], cache_mb=0) as bank:
        slide = bank.open(site.slides["jpeg"])
        slide.read_region((0, 0), 0, (64, 64))
        run_cli("tokens", "revoke", token.splitlines()[-1], home=site.home, check=True)
        with pytest.raises(TokenRejected):
            slide.read_region((512, 512), 0, (64, 64))


def test_sdk_reads_are_audited_with_the_grant(site: Site) -> None:
    with site.client() as bank:
        bank.open(site.slides["jpeg2000"]).read_region((0, 0), 0, (300, 300))
    entries = json_lines(run_cli("audit", "show", "--json", home=site.home, check=True).stdout)
    reads = [e for e in entries if e["actor"] == "alice" and e["slide_id"] == site.slides["jpeg2000"]]
    places = {(e["detail"] or {}).get("where") for e in reads}
    assert {"pyramid", "frames level 0"} <= places and all(e["grant"] for e in reads)


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Answers 503 (and once 429 with Retry-After) before it answers: what a restarting node does."""

    answers = [(503, {}), (429, {"Retry-After": "1"}), (502, {})]
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802  # http.server's name
        self.seen.append(self.path)
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        body = json.dumps({"name": "alice"} if status == 200 else {"detail": "busy"}).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_transient_failures_are_retried_with_back_off() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}", retries=3) as bank:
            assert bank.me() == {"name": "alice"}
        assert FlakyHandler.seen == ["/api/me"] * 4
        FlakyHandler.answers[:] = [(503, {})] * 3
        with Client(f"http://127.0.0.1:{server.server_port}", retries=1) as bank, pytest.raises(Exception, match="503"):
            bank.me()
    finally:
        server.shutdown()
        server.server_close()


def test_the_local_client_goes_through_the_same_gatekeeper(site: Site, stored: dict[str, StoredSlide],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    point_environment_at(site.home, monkeypatch)
    with Client.local(site.home, user="alice") as bank:
        assert bank.me()["name"] == "alice"
        slide = bank.open(site.slides["jpeg"])
        assert np.array_equal(slide.read_region_array((100, 200), 0, (300, 300)),
                              stored["jpeg"].read_region_array((100, 200), 0, (300, 300)))
    tokens = run_cli("tokens", "list", "--user", "alice", "--json", home=site.home, check=True).stdout
    local = [t for t in json.loads(tokens) if t["label"] == "sdk-local"]
    assert local and all(t["revoked_at"] for t in local)  # made for the session, revoked on close
    with Client.local(site.home, user="bob") as bob, pytest.raises(NotFound):
        bob.open(site.slides["jpeg"])


REAL_SLIDES = ["svs/CMU-1-Small-Region.svs", "ndpi/test3-DAPI-2-387.ndpi", "dicom/gcp-jpeg.dcm",
               "dicom/highdicom-sm_image_jpegls.dcm", "tiff/openslide-python-boxes.tiff"]


@pytest.fixture(scope="module")
def real_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """The real slides of ../shared/slides ingested in one batch: name -> slide id."""
    from conftest import SHARED_SLIDES

    if not (SHARED_SLIDES / "README.md").is_file():
        pytest.skip(f"real slides not available at {SHARED_SLIDES}")
    home = tmp_path_factory.mktemp("sdk-real") / "node"
    run_cli("init", home=home, check=True)
    open_dataset(home, "real")
    outcomes = json_lines(run_cli("ingest", *(str(SHARED_SLIDES / name) for name in REAL_SLIDES), "--dataset", "real",
                                  "--json", "--no-qc", home=home).stdout)
    by_path = {outcome["path"]: outcome for outcome in outcomes}
    slides = {}
    for name in REAL_SLIDES:
        outcome = by_path[str(SHARED_SLIDES / name)]
        assert outcome["status"] == "ingested", outcome
        slides[name] = outcome["slide_id"]
    yield home, slides


@pytest.mark.parametrize("name", REAL_SLIDES)
def test_real_slides_read_exactly_through_the_sdk(real_node: tuple[Path, dict[str, str]], name: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    home, slides = real_node
    point_environment_at(home, monkeypatch)
    node = open_node(home)
    try:
        reference = open_stored_slide(node.catalog, node.open_blob, slides[name])
        with Client.local(home) as bank, bank.open(slides[name]) as slide:
            assert slide.level_dimensions == reference.level_dimensions
            for location, level, size in random_regions(reference, 25, seed=1):
                assert np.array_equal(slide.read_region_array(location, level, size),
                                      reference.read_region_array(location, level, size)), (location, level, size)
        reference.close()
    finally:
        node.close()


def test_the_frames_route_and_its_fast_path_answer_alike(site: Site, stored: dict[str, StoredSlide]) -> None:
    """Up to 16 frames of an open slide are answered by the ASGI fast path, more by the documented
    route: the same stored bytes (edge frames whole, as stored), the same caching, the same refusals."""
    import httpx

    from slidebank.client.transport import Answer, multipart_parts

    reference = stored["jpeg"]
    columns, rows = reference.tile_grid(0)
    tiles = [(column, row) for row in range(rows) for column in range(columns)][-20:]  # the last row: edge frames
    query = ",".join(f"{c}_{r}" for c, r in tiles)
    headers = {"Authorization": f"Bearer {site.tokens['alice']}"}
    path = f"{site.base}/api/slides/{site.slides['jpeg']}/frames"

    def frames(tiles_query: str) -> list[bytes]:
        answer = httpx.get(path, params={"level": 0, "tiles": tiles_query}, headers=headers)
        assert answer.status_code == 200, answer.text
        return multipart_parts(Answer("GET", path, 200, answer.headers, answer.content))

    whole = frames(query)  # 20: the route
    halves = frames(",".join(query.split(",")[:10])) + frames(",".join(query.split(",")[10:]))  # the fast path
    expected = [reference.read_encoded_tile(0, c, r, crop_to_level=False) for c, r in tiles]
    assert whole == halves == expected
    first = httpx.get(path, params={"level": 0, "tiles": "0_0"}, headers=headers)
    assert first.headers["Cache-Control"].startswith("private")
    again = httpx.get(path, params={"level": 0, "tiles": "0_0"}, headers={**headers, "If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    for bad in ({"level": 0, "tiles": f"{columns}_0"}, {"level": 99, "tiles": "0_0"}, {"level": 0, "tiles": "0-0"},
                {"level": 0, "tiles": ",".join(["0_0"] * 65)}):
        assert httpx.get(path, params=bad, headers=headers).status_code == 400, bad
    stranger = {"Authorization": f"Bearer {site.tokens['bob']}"}
    assert httpx.get(path, params={"level": 0, "tiles": "0_0"}, headers=stranger).status_code == 404


def test_large_tiles_mean_fewer_frames_per_answer(site: Site, stored: dict[str, StoredSlide],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer carries at most MAX_FRAME_PIXELS of frames (bounded memory per request): with a
    bound of 16 of this slide's tiles, the pyramid says 16, the SDK batches by it, more are refused."""
    import slidebank.api.frames

    tile_width, tile_height = stored["jpeg"].level_tile_dimensions[0]
    monkeypatch.setattr(slidebank.api.frames, "MAX_FRAME_PIXELS", 16 * tile_width * tile_height)
    slide_id = site.slides["jpeg"]
    point_environment_at(site.home, monkeypatch)
    with Client.local(site.home, user="alice", cache_mb=0) as bank, bank.open(slide_id) as slide:
        assert slide._max_frames == 16
        whole = slide.read_region_array((0, 0), 0, slide.dimensions)  # 130 frames: batches of at most 16
        assert np.array_equal(whole, stored["jpeg"].read_region_array((0, 0), 0, slide.dimensions))
        with pytest.raises(BadRequest, match="at most 16 frames"):
            bank._transport.request("GET", f"/api/slides/{slide_id}/frames",
                                    params={"level": 0, "tiles": ",".join(["0_0"] * 17)})


def test_the_sdk_reference_renders_from_the_docstrings(tmp_path: Path) -> None:
    """`make docs` (pdoc) renders the SDK's reference: every public name, with the examples."""
    import subprocess
    import sys

    pdoc = Path(sys.executable).with_name("pdoc")
    done = subprocess.run([str(pdoc), "-o", str(tmp_path), "slidebank.client", "slidebank.patches"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    client = (tmp_path / "slidebank" / "client.html").read_text()
    for name in ("Client", "RemoteSlide", "read_region", "read_regions_array", "NotFound", "TokenRejected",
                 "ServerUnreachable", "Client.local", "get_best_level_for_downsample"):
        assert name in client, name
    import re

    assert "bank.search(" in re.sub(r"<[^>]+>", "", client)  # the package's example is there
    patches = (tmp_path / "slidebank" / "patches.html").read_text()
    for name in ("PatchDataset", "PatchStream", "Sampling", "export_webdataset", "AnnotationLabeler"):
        assert name in patches, name
