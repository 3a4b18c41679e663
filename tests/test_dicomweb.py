"""DICOMweb (QIDO-RS, WADO-RS) against real clients: dicomweb-client, wsidicom's WsiDicomWebClient,
and Orthanc's DICOMweb plugin holding the same instances (a differential test).

One node with a controlled dataset (an Aperio JPEG slide and an Aperio JPEG 2000 slide) and an open
one (a generic TIFF), served by `slidebank serve`; alice holds a grant on the controlled dataset.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import imagecodecs
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from sqlalchemy import delete, select
from wsidicom import WsiDicom, WsiDicomWebClient

from conftest import json_lines, run_cli, running_server
from databases import open_node
from orthanc import OrthancUnavailable, RunningOrthanc, running_orthanc
from slidebank.access.principal import operator
from slidebank.api.frames import multipart_related
from slidebank.db.models import DicomInstance
from slidebank.db.models import Image as ImageRow
from slidebank.dicomweb.negotiation import NotAcceptable, frame_answer, media_ranges
from slidebank.slides.frames import FrameDecoder
from slidebank.slides.stored import export_volumes, index_stored_instances, open_stored_slide
from slidebank.synth import modalities

PEOPLE = {"alice": "researcher", "bob": "researcher", "dac": "dac_member", "root": "administrator"}
STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"
STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@dataclass
class Site:
    base: str
    home: Path
    slides: dict[str, str]  # "jpeg", "jpeg2000" (controlled), "open"
    tokens: dict[str, str]
    exported: dict[str, list[Path]]  # slide kind -> its stored DICOM files, decrypted

    def client(self, who: str | None = "alice") -> DICOMwebClient:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else None
        return DICOMwebClient(f"{self.base}/dicomweb", headers=headers)

    def headers(self, who: str | None = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, aperio_slide, generic_slide) -> Iterator[Site]:  # noqa: ANN001
    """Set up through the node's services (what the CLI calls, without a process per step)."""
    folder = tmp_path_factory.mktemp("dicomweb")
    home = folder / "node"
    run_cli("init", home=home, check=True)
    node, me = open_node(home), operator()
    try:
        for name, role in PEOPLE.items():
            node.identities.add_user(me, name, role)
        for name in ("restricted", "submissions"):  # STOW-RS stores into "submissions": no other test sees it
            node.governance.create_dataset(me, name, "Apply to the DAC")
            node.governance.add_committee_member(me, name, "dac")
        node.governance.create_dataset(me, "public", "Synthetic test data, no restriction", ["DUO:0000004"])
        tokens = {name: node.identities.create_token(me, name)[0] for name in PEOPLE}
    finally:
        node.close()
    jpeg2000 = modalities.write_aperio_j2k_svs(folder / "j2k.svs", colorspace="rgb", width=700, height=500,
                                               tile=128, levels=2, mpp=0.5)
    sources = {"jpeg": (aperio_slide.path, "restricted"), "jpeg2000": (jpeg2000, "restricted"),
               "open": (generic_slide.path, "public")}
    sidecar = folder / "datasets.csv"
    sidecar.write_text("file,dataset\n" + "".join(f"{path.name},{dataset}\n" for path, dataset in sources.values()))
    outcomes = json_lines(run_cli("ingest", *(str(path) for path, _ in sources.values()), "--metadata", str(sidecar),
                                  "--workers", "2", "--json", "--no-qc", home=home, check=True).stdout)
    by_name = {Path(outcome["path"]).name: outcome["slide_id"] for outcome in outcomes}
    slides = {kind: by_name[path.name] for kind, (path, _) in sources.items()}
    node = open_node(home)
    try:
        alice = node.identities.principal_for_user("alice")
        request = node.governance.request_access(alice, "restricted", "A viewer")
        node.governance.approve(request, node.identities.principal_for_user("dac"), date.today() + timedelta(days=30))
        exported = {kind: export_volumes(node.volume_files(slide), node.open_blob, slide, folder / "exported")
                    for kind, slide in slides.items()}
    finally:
        node.close()
    with running_server(home) as base:
        yield Site(base, home, slides, tokens, exported)


def headers_of(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def value(result: dict[str, Any], tag: str) -> Any:
    values = result.get(tag, {}).get("Value", [])
    return values[0] if values else None


def uids(results: list[dict[str, Any]], tag: str) -> set[str]:
    return {value(result, tag) for result in results}


# --- QIDO-RS -------------------------------------------------------------------------------------------


def test_searches_match_uids_names_dates_and_pages(site: Site) -> None:
    files = {kind: [headers_of(path) for path in paths] for kind, paths in site.exported.items()}
    study = {kind: str(headers[0].StudyInstanceUID) for kind, headers in files.items()}
    alice, anonymous = site.client("alice"), site.client(None)

    assert uids(alice.search_for_studies(), STUDY) == set(study.values())
    assert uids(anonymous.search_for_studies(), STUDY) == {study["open"]}  # only what the caller may read
    assert uids(site.client("bob").search_for_series(), SERIES) == {str(files["open"][0].SeriesInstanceUID)}
    [found] = alice.search_for_studies(search_filters={"StudyInstanceUID": study["jpeg"]})
    assert value(found, "00201208") == len(files["jpeg"]) and value(found, "00201206") == 1
    assert value(found, "00080061") == "SM"
    listed = alice.search_for_studies(search_filters={"StudyInstanceUID": [study["jpeg"], study["open"]]})
    assert uids(listed, STUDY) == {study["jpeg"], study["open"]}

    patient = str(files["jpeg2000"][0].PatientID)
    assert uids(alice.search_for_studies(search_filters={"PatientID": patient}), STUDY) == {study["jpeg2000"]}
    assert uids(alice.search_for_studies(search_filters={"PatientName": patient[:8] + "*"}), STUDY) \
        >= {study["jpeg2000"]}
    assert alice.search_for_studies(search_filters={"PatientName": patient.lower()}) == []
    fuzzy = alice.search_for_studies(search_filters={"PatientName": patient.lower()}, fuzzymatching=True)
    assert uids(fuzzy, STUDY) == {study["jpeg2000"]}

    stored_date = str(files["jpeg"][0].StudyDate)
    assert len(alice.search_for_studies(search_filters={"StudyDate": f"{stored_date}-"})) == 3
    assert alice.search_for_studies(search_filters={"StudyDate": f"-{int(stored_date) - 1:08d}"}) == []
    assert len(alice.search_for_studies(search_filters={"ModalitiesInStudy": "SM"})) == 3
    assert alice.search_for_studies(search_filters={"ModalitiesInStudy": "CT"}) == []
    assert len(alice.search_for_series(search_filters={"Modality": "SM"})) == 3

    level0 = next(h for h in files["jpeg"] if "VOLUME" in h.ImageType and h.TotalPixelMatrixColumns == 3000)
    instances = alice.search_for_instances(study["jpeg"], fields=["AvailableTransferSyntaxUID"])
    assert len(instances) == len(files["jpeg"])
    [base] = [i for i in instances if value(i, SOP) == str(level0.SOPInstanceUID)]
    assert value(base, "00083002") == str(level0.file_meta.TransferSyntaxUID)
    assert value(base, "00280008") == int(level0.NumberOfFrames) and value(base, "00480006") == 3000
    everything = alice.search_for_instances(search_filters={"SOPClassUID": str(level0.SOPClassUID)},
                                            fields=["all"])
    assert len(everything) == sum(len(v) for v in files.values()) and all("00100020" in i for i in everything)
    pages = [alice.search_for_instances(limit=2, offset=offset) for offset in range(0, len(everything), 2)]
    assert [value(i, SOP) for page in pages for i in page] == [value(i, SOP) for i in everything]

    answer = httpx.get(f"{site.base}/dicomweb/studies", params={"StudyDate": "2026-1"}, headers=site.headers())
    assert answer.status_code == 400 and "StudyDate" in answer.text
    answer = httpx.get(f"{site.base}/dicomweb/studies", params={"NoSuchKey": "1", "limit": "1"},
                       headers=site.headers())
    assert answer.status_code == 200 and "NoSuchKey" in answer.headers["warning"] and len(answer.json()) == 1
    assert answer.headers["content-type"] == "application/dicom+json"

    audit = json_lines(run_cli("audit", "show", "--json", home=site.home, check=True).stdout)
    searches = [e for e in audit if e["action"] == "dicomweb.search" and e["actor"] == "alice"]
    assert searches and {e["dataset"] for e in searches} == {"restricted"} and all(e["grant"] for e in searches)


# --- WADO-RS -------------------------------------------------------------------------------------------


def test_wsidicom_reads_the_same_pixels_as_the_exported_files(site: Site) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {site.tokens['alice']}"
    for kind in ("jpeg", "jpeg2000", "open"):
        first = headers_of(site.exported[kind][0])
        web = WsiDicomWebClient.create_client(f"{site.base}/dicomweb", auth=session)
        with WsiDicom.open_web(web, first.StudyInstanceUID, first.SeriesInstanceUID) as remote, \
                WsiDicom.open([str(p) for p in site.exported[kind]]) as local:
            assert [lv.size for lv in remote.levels] == [lv.size for lv in local.levels]
            rng = np.random.default_rng(5)
            for level in range(len(local.levels)):
                size = local.levels[level].size
                for _ in range(3):
                    location = (int(rng.integers(0, size.width)), int(rng.integers(0, size.height)))
                    region = (min(int(rng.integers(1, 400)), size.width - location[0]),
                              min(int(rng.integers(1, 400)), size.height - location[1]))
                    got = np.asarray(remote.read_region(location, level, region))
                    want = np.asarray(local.read_region(location, level, region))
                    assert np.array_equal(got, want), (kind, level, location, region)


def test_instances_frames_and_metadata_round_trip(site: Site) -> None:
    alice = site.client("alice")
    path = next(p for p in site.exported["jpeg"] if headers_of(p).TotalPixelMatrixColumns == 3000)
    header = headers_of(path)
    ids = (str(header.StudyInstanceUID), str(header.SeriesInstanceUID), str(header.SOPInstanceUID))

    retrieved = alice.retrieve_instance(*ids)
    buffer = io.BytesIO()
    retrieved.save_as(buffer, enforce_file_format=True)
    assert retrieved.SOPInstanceUID == ids[2] and retrieved.NumberOfFrames == header.NumberOfFrames
    raw = httpx.get(f"{site.base}/dicomweb/studies/{ids[0]}/series/{ids[1]}/instances/{ids[2]}",
                    headers=site.headers())
    assert hashlib.sha256(path.read_bytes()).hexdigest() in {
        hashlib.sha256(part).hexdigest() for part in _parts(raw)}  # the stored file, byte for byte
    study = alice.retrieve_study(ids[0])
    assert {str(d.SOPInstanceUID) for d in study} == {str(headers_of(p).SOPInstanceUID) for p in site.exported["jpeg"]}

    node = open_node(site.home)
    slide = open_stored_slide(node.catalog, node.open_blob, site.slides["jpeg"])
    try:
        columns, _ = slide.tile_grid(0)
        numbers = [1, 2, columns + 1, int(header.NumberOfFrames)]
        stored = [slide.read_encoded_tile(0, (n - 1) % columns, (n - 1) // columns, crop_to_level=False)
                  for n in numbers]
        assert alice.retrieve_instance_frames(*ids, frame_numbers=numbers,
                                              media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),)) == stored
        as_stored = httpx.get(f"{site.base}/dicomweb/studies/{ids[0]}/series/{ids[1]}/instances/{ids[2]}/frames/"
                              + ",".join(map(str, numbers)), headers={**site.headers(), "Accept": STORED})
        assert _parts(as_stored) == stored
        again = httpx.get(as_stored.request.url, headers={**site.headers(), "Accept": STORED})  # the fast path now
        assert again.content == as_stored.content and again.headers["content-type"] == as_stored.headers[
            "content-type"] and again.headers["etag"] == as_stored.headers["etag"]
        decoder = FrameDecoder(slide.frame_encoding(0))
        [raw_frame] = alice.retrieve_instance_frames(*ids, frame_numbers=[2], media_types=(
            ("application/octet-stream", "1.2.840.10008.1.2.1"),))
        assert np.array_equal(np.frombuffer(raw_frame, np.uint8).reshape(256, 256, 3), decoder.decode(stored[1]))
        [lossless] = alice.retrieve_instance_frames(*ids, frame_numbers=[2], media_types=(("image/jls",),))
        assert np.array_equal(imagecodecs.jpegls_decode(lossless), decoder.decode(stored[1]))
    finally:
        slide.close()
        node.close()
    frames_url = f"{site.base}/dicomweb/studies/{ids[0]}/series/{ids[1]}/instances/{ids[2]}/frames"
    assert httpx.get(f"{frames_url}/1", headers={**site.headers(), "Accept": "image/jpeg"}).content == stored[0]
    refused = httpx.get(f"{frames_url}/1", headers={**site.headers(), "Accept": 'multipart/related; type="image/jp2";'
                                                                               " transfer-syntax=1.2.840.10008.1.2.4.91"})
    assert refused.status_code == 406
    assert httpx.get(f"{frames_url}/{int(header.NumberOfFrames) + 1}", headers=site.headers()).status_code == 404

    metadata = alice.retrieve_instance_metadata(*ids)
    dataset = pydicom.Dataset.from_json(metadata)
    assert dataset.SOPInstanceUID == ids[2] and dataset.TotalPixelMatrixColumns == 3000
    icc_path = "00480105/0/00282000"
    icc = metadata["00480105"]["Value"][0]["00282000"]
    assert icc["BulkDataURI"].endswith(f"/instances/{ids[2]}/bulkdata/{icc_path}")
    assert alice.retrieve_bulkdata(icc["BulkDataURI"]) == [header.OpticalPathSequence[0].ICCProfile]
    assert len(alice.retrieve_series_metadata(ids[0], ids[1])) == len(site.exported["jpeg"])


def test_rendered_images_and_thumbnails(site: Site) -> None:
    path = next(p for p in site.exported["open"] if headers_of(p).TotalPixelMatrixColumns == 1500)
    header = headers_of(path)
    instance = (f"{site.base}/dicomweb/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}"
                f"/instances/{header.SOPInstanceUID}")
    rendered = httpx.get(f"{instance}/rendered", params={"viewport": "300,300"})
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(rendered.content))
    assert image.size == (300, round(1100 * 300 / 1500))
    with Image.open(io.BytesIO(httpx.get(f"{instance}/rendered").content)) as whole, \
            WsiDicom.open([str(p) for p in site.exported["open"]]) as local:
        reference = np.asarray(local.read_region((0, 0), 0, (1500, 1100)).convert("RGB"), dtype=np.int16)
        assert whole.size == (1500, 1100)
        assert np.abs(np.asarray(whole, dtype=np.int16) - reference).mean() < 3  # JPEG of the same pixels
    png = httpx.get(f"{instance}/frames/1/rendered", headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size == (
        int(header.Columns), int(header.Rows))
    thumbnail = httpx.get(f"{site.base}/dicomweb/studies/{header.StudyInstanceUID}/thumbnail",
                          params={"viewport": "128,128"})
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) == 128
    assert httpx.get(f"{instance}/rendered", params={"viewport": "0,10"}).status_code == 400
    big = httpx.get(f"{instance}/rendered", params={"viewport": "4000,4000"})  # fitted, never enlarged: 1500x1100
    assert Image.open(io.BytesIO(big.content)).size == (1500, 1100)
    large = headers_of(next(p for p in site.exported["jpeg"] if headers_of(p).TotalPixelMatrixColumns == 3000))
    whole = (f"{site.base}/dicomweb/studies/{large.StudyInstanceUID}/series/{large.SeriesInstanceUID}"
             f"/instances/{large.SOPInstanceUID}/rendered")
    refused = httpx.get(whole, headers=site.headers())  # 3000x2400 is more than one answer renders
    assert refused.status_code == 400 and "viewport" in refused.text
    fitted = httpx.get(whole, params={"viewport": "1000,1000"}, headers=site.headers())
    assert Image.open(io.BytesIO(fitted.content)).size == (1000, 800)
    assert httpx.get(f"{instance}/rendered", headers={"Accept": "image/gif"}).status_code == 406


def test_controlled_instances_are_not_found_without_a_grant_and_reads_are_audited(site: Site) -> None:
    header = headers_of(site.exported["jpeg"][0])
    instance = (f"/dicomweb/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}"
                f"/instances/{header.SOPInstanceUID}")
    for who in (None, "bob"):
        for path in ("", "/metadata", "/frames/1", "/rendered?viewport=64,64"):
            assert httpx.get(site.base + instance + path, headers=site.headers(who)).status_code == 404, (who, path)
        assert httpx.get(f"{site.base}/dicomweb/studies/{header.StudyInstanceUID}/series",
                         headers=site.headers(who)).json() == []
    assert httpx.get(site.base + instance + "/frames/1", headers={"Authorization": "Bearer sbk_" + "x" * 43}
                     ).status_code == 401
    assert httpx.get(site.base + instance + "/frames/1", headers=site.headers("alice")).status_code == 200
    audit = json_lines(run_cli("audit", "show", "--json", home=site.home, check=True).stdout)
    reads = [e for e in audit if e["actor"] == "alice" and e["slide_id"] == site.slides["jpeg"]]
    assert any((e["detail"] or {}).get("where", "").startswith("dicomweb frames") for e in reads)
    assert all(e["grant"] for e in reads)
    retrievals = [e for e in reads if e["action"] == "dicomweb.retrieve"]
    assert retrievals, "whole-instance retrievals are audited as such"


# --- The same instances in Orthanc -----------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc() -> Iterator[RunningOrthanc]:
    """Orthanc with its DICOMweb plugin: the reference archive (both tests store the same instances)."""
    try:
        with running_orthanc() as running:
            yield running
    except OrthancUnavailable as reason:
        pytest.skip(str(reason))


def test_orthanc_and_slidebank_answer_alike(site: Site, orthanc: RunningOrthanc) -> None:
    orthanc.store([path for paths in site.exported.values() for path in paths])
    theirs, ours = DICOMwebClient(orthanc.dicomweb), site.client("alice")  # she reads all three slides
    header = headers_of(site.exported["jpeg"][0])
    queries: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
        ("studies", {}, STUDY, ("00100020", "00200010", "00201206", "00201208")),
        ("studies", {"PatientID": str(header.PatientID)}, STUDY, ("00100020",)),
        ("studies", {"StudyDate": f"{header.StudyDate}-"}, STUDY, ()),
        ("series", {"Modality": "SM"}, SERIES, ("00080060", "00201209", "00200011")),
        ("instances", {"StudyInstanceUID": str(header.StudyInstanceUID)}, SOP,
         ("00080016", "00280008", "00280010", "00280011")),
        ("instances", {"SOPClassUID": str(header.SOPClassUID)}, SOP, ("0020000E",)),
    ]
    for level, filters, key, compared in queries:
        search = {"studies": "search_for_studies", "series": "search_for_series",
                  "instances": "search_for_instances"}[level]
        fields = [tag for tag in compared if tag not in ("00201206", "00201208", "00201209")] or None
        mine = getattr(ours, search)(search_filters=filters, fields=fields)
        orthancs = getattr(theirs, search)(search_filters=filters, fields=fields)
        assert uids(mine, key) == uids(orthancs, key), (level, filters)
        by_key = {value(r, key): r for r in orthancs}
        for result in mine:
            for tag in compared:
                assert value(result, tag) == value(by_key[value(result, key)], tag), (level, filters, tag)
    # Orthanc 1.10 does not percent-decode `*` (dicomweb-client sends %2A): wildcards as written.
    wildcard = "/studies?PatientName=SUBJ-*&includefield=00100020"
    assert uids(httpx.get(orthanc.dicomweb + wildcard).json(), STUDY) == uids(
        httpx.get(f"{site.base}/dicomweb{wildcard}", headers=site.headers("root")).json(), STUDY) != set()
    for kind in ("jpeg", "open"):
        for path in site.exported[kind]:
            dataset = headers_of(path)
            ids = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID))
            numbers = sorted({1, int(dataset.NumberOfFrames), (int(dataset.NumberOfFrames) + 1) // 2})
            media = (("image/jpeg", "1.2.840.10008.1.2.4.50"),)
            assert ours.retrieve_instance_frames(*ids, frame_numbers=numbers, media_types=media) == \
                theirs.retrieve_instance_frames(*ids, frame_numbers=numbers, media_types=media), (kind, ids)


# --- dicom-microscopy-viewer (Slim's viewer library) in Chromium -------------------------------------------

VIEWER_PAGE = Path(__file__).parent / "viewer" / "dicom-microscopy-viewer.html"
NODE_MODULES = Path(__file__).resolve().parents[1] / "web" / "node_modules"


@pytest.fixture(scope="module")
def viewer_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The viewer page with the npm libraries, served from its own origin (as Slim is)."""
    dist = NODE_MODULES / "dicom-microscopy-viewer" / "dist"
    if not dist.is_dir():
        pytest.skip("dicom-microscopy-viewer is not installed (make install runs npm ci in web/)")
    root = tmp_path_factory.mktemp("viewer")
    shutil.copy(VIEWER_PAGE, root / "index.html")
    shutil.copy(NODE_MODULES / "dicomweb-client" / "build" / "dicomweb-client.js", root)
    for path in dist.iterdir():
        if path.is_file() and path.suffix in (".js", ".wasm"):
            shutil.copy(path, root)
    (root / "static" / "js").mkdir(parents=True)  # where the bundle loads its decoding worker from
    for path in (dist / "dynamic-import").iterdir():
        if path.suffix in (".js", ".wasm"):
            shutil.copy(path, root / "static" / "js")
    (root / "favicon.ico").write_bytes(b"")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_dicom_microscopy_viewer_shows_the_slide_with_no_failed_frame(site: Site, viewer_origin: str,
                                                                      browser) -> None:  # noqa: ANN001
    header = headers_of(site.exported["jpeg"][0])
    failed: list[str] = []
    frames: list[str] = []
    page = browser.new_page()

    def answered(response: Any) -> None:
        if "/dicomweb/" in response.url:
            if response.status >= 400:
                failed.append(f"{response.status} {response.url}")
            elif "/frames/" in response.url:
                frames.append(response.url)

    page.on("response", answered)
    page.on("requestfailed", lambda request: failed.append(f"{request.failure} {request.url}"))
    query = (f"url={site.base}/dicomweb&study={header.StudyInstanceUID}&series={header.SeriesInstanceUID}"
             f"&token={site.tokens['alice']}")
    page.goto(f"{viewer_origin}/index.html?{query}")
    page.wait_for_function("window.viewerState !== 'starting'", timeout=60000)
    assert page.evaluate("window.viewerState").startswith("rendered"), page.evaluate("window.viewerState")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(1000)
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#viewport").screenshot())).convert("RGB"), dtype=np.int16)
    tissue = (shot.max(axis=2) - shot.min(axis=2) > 30).mean()  # coloured pixels: stained tissue, not glass
    assert frames and not failed, failed[:5]
    assert tissue > 0.2, f"only {tissue:.0%} of the viewport shows tissue"

    page.goto(f"{viewer_origin}/index.html?{query.split('&token=')[0]}")  # no token: a controlled slide is not there
    page.wait_for_function("window.viewerState !== 'starting'", timeout=60000)
    assert page.evaluate("window.viewerState").startswith("error")
    page.close()


# --- STOW-RS ------------------------------------------------------------------------------------------


def test_stow_stores_through_the_ingest_pipeline_and_a_failure_leaves_nothing(site: Site) -> None:
    def stow(who: str) -> DICOMwebClient:
        return DICOMwebClient(f"{site.base}/dicomweb", headers=site.headers(who), stow_url_prefix="datasets/submissions")

    received = [pydicom.dcmread(path) for path in site.exported["open"]]
    with pytest.raises(requests.HTTPError) as refused:
        stow("bob").store_instances(received)
    assert refused.value.response.status_code == 403

    # A slide with one truncated level and a part that is no DICOM at all: refused whole, nothing kept.
    level0 = max(site.exported["open"], key=lambda p: p.stat().st_size)
    parts = [(p.read_bytes()[: p.stat().st_size // 2] if p == level0 else p.read_bytes(), "application/dicom")
             for p in site.exported["open"]] + [(b"not dicom at all", "application/dicom")]
    body = multipart_related(parts, "stowboundary")
    answer = httpx.post(f"{site.base}/dicomweb/studies", params={"dataset": "submissions"}, content=body,
                        timeout=300, headers={**site.headers("root"),
                                              "Content-Type": 'multipart/related; type="application/dicom"; '
                                                              "boundary=stowboundary"})
    assert answer.status_code == 409, answer.text
    failed = answer.json()["00081198"]["Value"]
    assert len(failed) == len(parts) and "not a DICOM instance" in answer.headers["warning"]
    assert "00081199" not in answer.json()
    assert not list((site.home / "uploads").glob("*/*"))  # the received parts went with the request
    [listed] = json_lines(run_cli("slides", "list", "--json", home=site.home, check=True).stdout)
    assert not [s for s in listed if s.get("dataset") == "submissions"]

    stored = stow("root").store_instances(received)
    items = stored.ReferencedSOPSequence
    assert {str(i.ReferencedSOPInstanceUID) for i in items} == {str(d.SOPInstanceUID) for d in received}
    assert all(i.WarningReason == 0xB000 for i in items) and "FailedSOPSequence" not in stored
    [series_url] = {str(i.RetrieveURL) for i in items}
    study_uid, series_uid = series_url.split("/studies/")[1].split("/series/")
    assert series_uid != str(received[0].SeriesInstanceUID)  # new UIDs: the stored files are de-identified copies
    root = site.client("root")
    instances = root.search_for_instances(study_uid, series_uid, fields=["NumberOfFrames"])
    assert len(instances) == len(received)
    base = max(instances, key=lambda i: value(i, "00480006") or 0)
    original = max(received, key=lambda d: int(d.TotalPixelMatrixColumns))
    media = (("image/jpeg", "1.2.840.10008.1.2.4.50"),)
    assert root.retrieve_instance_frames(study_uid, series_uid, value(base, SOP), frame_numbers=[1, 2],
                                         media_types=media) == \
        root.retrieve_instance_frames(str(original.StudyInstanceUID), str(original.SeriesInstanceUID),
                                      str(original.SOPInstanceUID), frame_numbers=[1, 2], media_types=media)
    assert site.client("alice").search_for_studies(search_filters={"StudyInstanceUID": study_uid}) == []
    again = stow("root").store_instances(received)  # the same files again: already stored, not twice
    assert {str(i.RetrieveURL) for i in again.ReferencedSOPSequence} == {series_url}


# --- Slidebank as a client of an archive ------------------------------------------------------------------


def test_slides_are_pushed_to_and_pulled_from_an_archive(site: Site, orthanc: RunningOrthanc, tmp_path: Path) -> None:
    pushed = json_lines(run_cli("push", site.slides["open"], site.slides["jpeg"], "--to", orthanc.dicomweb,
                                "--json", home=site.home, check=True).stdout)[0]
    assert pushed["instances"] == {site.slides["open"]: len(site.exported["open"]),
                                   site.slides["jpeg"]: len(site.exported["jpeg"])}
    theirs = DICOMwebClient(orthanc.dicomweb)
    header = {kind: headers_of(site.exported[kind][0]) for kind in ("open", "jpeg")}
    assert uids(theirs.search_for_instances(str(header["open"].StudyInstanceUID)), SOP) == {
        str(headers_of(p).SOPInstanceUID) for p in site.exported["open"]}
    audit = json_lines(run_cli("audit", "show", "--json", home=site.home, check=True).stdout)
    assert {e["slide_id"] for e in audit if e["action"] == "slide.push"} == {site.slides["open"], site.slides["jpeg"]}

    fresh = tmp_path / "fresh"
    run_cli("init", home=fresh, check=True)
    run_cli("datasets", "create", "pulled", "--policy", "Apply to the DAC", home=fresh, check=True)
    by_study = f"dicomweb+{orthanc.dicomweb}/studies/{header['open'].StudyInstanceUID}"
    by_query = f"dicomweb+{orthanc.dicomweb}/studies?PatientID={header['jpeg'].PatientID}"
    outcomes = json_lines(run_cli("ingest", by_study, by_query, "--dataset", "pulled", "--json", "--no-qc",
                                  home=fresh, check=True).stdout)
    assert [o["status"] for o in outcomes] == ["ingested", "ingested"]
    assert not list((fresh / "uploads").glob("*/*"))  # what was retrieved went once stored
    origin, pulled = open_node(site.home), open_node(fresh)
    try:
        for kind in ("open", "jpeg"):
            original = open_stored_slide(origin.catalog, origin.open_blob, site.slides[kind])
            sizes = {o["slide_id"]: pulled.catalog.get_slide(o["slide_id"]) for o in outcomes}
            [slide_id] = [k for k, v in sizes.items() if v and v["width"] == original.dimensions[0]]
            copy = open_stored_slide(pulled.catalog, pulled.open_blob, slide_id)
            try:  # frames copied, not re-encoded, on the way out and back in
                assert copy.level_count == original.level_count
                assert copy.read_encoded_tile(0, 1, 1, crop_to_level=False) == \
                    original.read_encoded_tile(0, 1, 1, crop_to_level=False)
            finally:
                copy.close()
                original.close()
    finally:
        origin.close()
        pulled.close()

    nothing = run_cli("ingest", f"dicomweb+{orthanc.dicomweb}/studies?PatientID=NOBODY", "--dataset", "pulled",
                      home=fresh)
    assert nothing.returncode == 2 and "nothing that matches" in nothing.stdout + nothing.stderr
    unknown = run_cli("ingest", f"dicomweb+{orthanc.dicomweb}/studies/1.2.3.4", "--dataset", "pulled", home=fresh)
    assert unknown.returncode == 2 and "404" in unknown.stdout + unknown.stderr


# --- The index and the negotiation ----------------------------------------------------------------------


def test_slides_stored_before_dicomweb_are_indexed_from_their_files(site: Site, tmp_path: Path) -> None:
    node = open_node(site.home)
    try:
        with node.uow.read() as session:
            before = {row.sop_instance_uid: row.series_uid for row in session.scalars(select(DicomInstance))}
            image_id = session.scalar(select(ImageRow.id).where(ImageRow.slide_id == site.slides["open"]))
        # What a node stored before the index existed looks like: files, no rows (restored at the end).
        with node.uow.write() as session:
            session.execute(delete(DicomInstance).where(DicomInstance.image_id == image_id))
        assert index_stored_instances(node.catalog, node.open_blob) == len(site.exported["open"])
        assert index_stored_instances(node.catalog, node.open_blob) == 0  # done once
        with node.uow.read() as session:
            after = {row.sop_instance_uid: row.series_uid for row in session.scalars(select(DicomInstance))}
        assert after == before
    finally:
        node.close()


def test_accept_headers_are_negotiated_as_ps3_18_says() -> None:
    jpeg = "1.2.840.10008.1.2.4.50"
    assert [r.media_type for r in media_ranges('image/png;q=0.5, multipart/related; type="image/jpeg", */*;q=0.1')] \
        == ["multipart/related", "image/png", "*/*"]
    assert frame_answer(STORED, jpeg, 3, "image/jpeg").transcode is False
    assert frame_answer('multipart/related; type="image/jpeg"', jpeg, 3, "image/jpeg").transfer_syntax == jpeg
    single = frame_answer("image/jpeg", jpeg, 1, "image/jpeg")
    assert not single.multipart and not single.transcode
    assert frame_answer(None, jpeg, 2, "image/jpeg").transfer_syntax == "1.2.840.10008.1.2.1"  # the default
    assert frame_answer('multipart/related; type="image/jpeg"', "1.2.840.10008.1.2.4.90", 1, "image/jp2").transcode
    with pytest.raises(NotAcceptable):
        frame_answer("image/jpeg", jpeg, 2, "image/jpeg")  # one single-part image cannot carry two frames
    with pytest.raises(NotAcceptable):
        frame_answer('multipart/related; type="image/jphc"', jpeg, 1, "image/jpeg")


def _parts(answer: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related answer."""
    assert answer.status_code == 200, answer.text
    boundary = answer.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    parts = []
    for chunk in answer.content.split(f"--{boundary}".encode())[1:-1]:
        _, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body[:-2])  # the CRLF before the next boundary
    return parts
