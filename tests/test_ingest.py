"""Ingest pipeline on real and synthetic slides: validation, de-identification, conversion, storage,
and what each modality becomes (RGB and grey brightfield stored, deep and multi-channel images
refused, Aperio JPEG 2000 labelled and coloured right) and where the pixel size comes from."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pydicom.pixels
import pytest
import tifffile
from pydicom.uid import JPEG2000, JPEGBaseline8Bit, JPEGLSLossless

from conftest import json_lines, open_wsidicom, run_cli
from databases import catalog_bytes
from slidebank.catalog.records import SlideDescription
from slidebank.ingest.pipeline import NOMINAL_SPACING_MM, IngestOutcome, resolve_pixel_size
from slidebank.ingest.runner import plan_ingest, run_ingest
from slidebank.node import Node
from slidebank.slides.inspect import SlideRejected, inspect_source
from slidebank.slides.source import discover
from slidebank.synth import modalities as m

# What ../shared/slides/README.md says about each file.
EXPECTED_SHARED = {
    "svs/CMU-1-Small-Region.svs": "ingested",
    "svs/openslide-python-small.svs": "ingested",
    "ndpi/test3-DAPI-2-387.ndpi": "ingested",
    "tiff/openslide-python-boxes.tiff": "ingested",
    "tiff/not-a-pyramid-kidney-48-5.tif": "rejected",
    "dicom/highdicom-sm_image.dcm": "ingested",
    "dicom/highdicom-sm_image_jpegls.dcm": "ingested",
    "dicom/gcp-jpeg.dcm": "ingested",
    "dicom/openslide-python-boxes_0.dcm": "ingested",  # with _1.dcm: one series, one slide
}


def ingest(node: Node, *paths: Path, **options) -> list[IngestOutcome]:
    workers = options.pop("workers", 1)
    return run_ingest(node, plan_ingest(list(paths), **options), workers=workers)


def store_snapshot(node: Node) -> tuple[set[str], list[dict]]:
    return set(node.store.iter_blobs()), node.catalog.list_slides()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(float) - b.astype(float)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_every_shared_slide_is_ingested_or_refused_as_documented(node: Node, shared_slides: Path) -> None:
    outcomes = {Path(o.path).relative_to(shared_slides).as_posix(): o for o in ingest(node, shared_slides)}
    assert {name: o.status for name, o in outcomes.items()} == EXPECTED_SHARED
    refused = outcomes["tiff/not-a-pyramid-kidney-48-5.tif"]
    assert "strip" in refused.error and "tiled" in refused.error
    assert len(node.catalog.list_slides()) == 8
    series = node.catalog.get_slide(outcomes["dicom/openslide-python-boxes_0.dcm"].slide_id)
    assert series["provenance"]["source_files"] == 2


def test_svs_tiles_are_copied_and_level0_pixels_are_identical(node: Node, shared_slides: Path) -> None:
    source = shared_slides / "svs/CMU-1-Small-Region.svs"
    [outcome] = ingest(node, source)
    assert outcome.status == "ingested" and outcome.method == "tile-copy"
    detail = node.catalog.get_slide(outcome.slide_id)
    assert detail["associated_images_stored"] == []
    assert set(detail["source_associated_images"]) >= {"label", "macro"}
    downsamples = [level["downsample"] for level in detail["levels"]]
    assert downsamples == sorted(downsamples) and all(abs(d - 2**i) / 2**i < 0.01 for i, d in enumerate(downsamples))
    with open_wsidicom(node, outcome.slide_id) as stored, openslide.OpenSlide(source) as original:
        region = (600, 900), (1024, 1024)
        ours = np.asarray(stored.read_region(region[0], 0, region[1]).convert("RGB"))
        theirs = np.asarray(original.read_region(region[0], 0, region[1]).convert("RGB"))
    assert np.array_equal(ours, theirs)


def test_reencoded_pyramid_keeps_fidelity(node: Node, shared_slides: Path) -> None:
    source = shared_slides / "tiff/openslide-python-boxes.tiff"
    [outcome] = ingest(node, source)
    assert outcome.status == "ingested" and outcome.method == "re-encoded"
    with open_wsidicom(node, outcome.slide_id) as stored, openslide.OpenSlide(source) as original:
        size = original.dimensions
        ours = np.asarray(stored.read_region((0, 0), 0, size).convert("RGB"))
        theirs = np.asarray(original.read_region((0, 0), 0, size).convert("RGB"))
        assert stored.levels[0].size.width == 300  # one 512-px tile: no lower level needed
    assert psnr(ours, theirs) > 40


def test_reencoded_synthetic_region_keeps_fidelity(node: Node, generic_slide, tmp_path: Path) -> None:  # noqa: ANN001
    """A losslessly compressed (deflate) single-level TIFF must be re-encoded, levels built: > 40 dB."""
    with openslide.OpenSlide(generic_slide.path) as original:
        pixels = np.asarray(original.read_region((0, 0), 0, original.dimensions).convert("RGB"))
    source = tmp_path / "deflate.tiff"
    per_cm = 10_000 / 0.25  # 0.25 µm per pixel
    tifffile.imwrite(
        source, pixels, tile=(256, 256), compression="zlib", photometric="rgb",
        resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
    )
    [outcome] = ingest(node, source)
    assert outcome.status == "ingested" and outcome.method == "re-encoded", outcome
    with open_wsidicom(node, outcome.slide_id) as stored:
        assert [level.size.width for level in stored.levels] == [1500, 750, 375]
        ours = np.asarray(stored.read_region((300, 50), 0, (1024, 1024)).convert("RGB"))
    assert psnr(ours, pixels[50:1074, 300:1324]) > 40


def test_synthetic_slide_is_deidentified_in_every_stored_byte(node: Node, aperio_slide) -> None:  # noqa: ANN001
    [outcome] = ingest(node, aperio_slide.path, dataset="deid")
    assert outcome.status == "ingested", outcome.error
    detail = node.catalog.get_slide(outcome.slide_id)
    stored = node.catalog.stored_files(outcome.slide_id)
    needles = [s.encode() for s in aperio_slide.phi_strings] + [aperio_slide.path.name.encode()]
    assert needles, "the generator must report the PHI it wrote"
    raw_source = aperio_slide.path.read_bytes()
    assert any(n in raw_source for n in needles), "the source should contain the fake PHI"
    for info in stored:
        blob = node.open_blob(info)
        plaintext = blob.pread(0, blob.size)
        blob.close()
        leaked = [n for n in needles if n in plaintext]  # decrypted: what any reader with a grant sees
        assert not leaked, f"{info.sha256} leaks {leaked}"
        on_disk = node.store.blob_path(info.sha256).read_bytes()
        assert info.key_header and plaintext[:64] not in on_disk, "stored files are encrypted at rest"
        if info.role == "volume":
            dataset = pydicom.dcmread(io.BytesIO(plaintext), stop_before_pixels=True)
            assert not {"LABEL", "OVERVIEW"} & set(dataset.ImageType)
            assert dataset.PatientIdentityRemoved == "YES"
            assert dataset.ContainerIdentifier == outcome.slide_id
            assert "AcquisitionDateTime" not in dataset or dataset.AcquisitionDateTime.startswith(("1970", "0001"))
    catalog_dump = str(detail).encode()
    assert not [n for n in needles if n in catalog_dump]


def test_same_bytes_twice_is_a_duplicate(node: Node, aperio_slide, tmp_path: Path) -> None:  # noqa: ANN001
    [first] = ingest(node, aperio_slide.path)
    copy = tmp_path / "renamed-copy.svs"
    shutil.copy(aperio_slide.path, copy)
    [second] = ingest(node, copy)
    assert (first.status, second.status) == ("ingested", "duplicate")
    assert second.slide_id == first.slide_id
    assert len(node.catalog.list_slides()) == 1


def test_submitter_slide_id_and_sidecar_metadata(node: Node, generic_slide, tmp_path: Path) -> None:  # noqa: ANN001
    sidecar = tmp_path / "meta.csv"
    sidecar.write_text(
        "file,subject,case,specimen,block,slide,species,anatomical_site,stain,diagnosis\n"
        f"{generic_slide.path.name},PATIENT-42,S26-0777,S26-0777-A,A1,A1-HE,human,liver,H&E,steatosis\n"
    )
    [outcome] = ingest(node, generic_slide.path, sidecar=sidecar, slide_id="HOSP.2026-0042")
    assert outcome.status == "ingested", outcome.error
    assert outcome.slide_id == "HOSP.2026-0042"
    detail = node.catalog.get_slide("HOSP.2026-0042")
    flat = str(detail)
    assert detail["samples"]["block"].startswith(detail["samples"]["specimen"] + "/BLOC-")
    stored = catalog_bytes(node.settings.home)
    for accession in ("PATIENT-42", "S26-0777", "A1"):
        assert accession not in flat, f"{accession}: submitter identifiers are pseudonymised"
        if len(accession) > 4:  # a two-byte needle turns up by chance in a binary file
            assert accession.encode() not in stored, accession
    assert b"A1-HE" not in stored
    assert "steatosis" in flat and "liver" in flat


@pytest.mark.parametrize("bad_id", ["../escape", ".hidden", "a/b", "x" * 65, "a b"])
def test_bad_slide_ids_are_refused(node: Node, generic_slide, bad_id: str) -> None:  # noqa: ANN001
    before = store_snapshot(node)
    [outcome] = ingest(node, generic_slide.path, slide_id=bad_id)
    assert outcome.status == "rejected" and "slide id" in outcome.error
    assert store_snapshot(node) == before


def _truncated(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def _corrupt_tiles(source: Path, target: Path) -> Path:
    """Overwrite the middle of every level-0 tile with noise: the structure stays, the pixels do not."""
    shutil.copy(source, target)
    with tifffile.TiffFile(target) as tif:
        page = tif.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    rng = np.random.default_rng(0)
    with open(target, "r+b") as handle:
        for offset, count in spans:
            handle.seek(offset + 2)
            handle.write(rng.integers(0, 255, size=max(0, count - 4), dtype=np.uint8).tobytes())
    return target


def _absurd_dimensions(target: Path) -> Path:
    tifffile.imwrite(target, np.zeros((512, 512, 3), np.uint8), tile=(256, 256), photometric="rgb")
    with tifffile.TiffFile(target, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(4_000_000)
        tif.pages[0].tags["ImageLength"].overwrite(3_000_000)
    return target


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("truncated-half", "truncated"),
        ("truncated-header", ""),
        ("corrupt-tiles", "corrupt"),
        ("absurd-dimensions", "absurd dimensions"),
        ("random-bytes", "unsupported format"),
        ("empty", "empty file"),
        ("text", "unsupported format"),
    ],
)
def test_hostile_files_are_refused_and_change_nothing(
    node: Node, aperio_slide, tmp_path: Path, case: str, expected: str  # noqa: ANN001
) -> None:
    target = tmp_path / f"{case}.svs"
    if case == "truncated-half":
        _truncated(aperio_slide.path, target, 0.5)
    elif case == "truncated-header":
        _truncated(aperio_slide.path, target, 0.0005)
    elif case == "corrupt-tiles":
        _corrupt_tiles(aperio_slide.path, target)
    elif case == "absurd-dimensions":
        _absurd_dimensions(target.with_suffix(".tiff"))
        target = target.with_suffix(".tiff")
    elif case == "random-bytes":
        target.write_bytes(np.random.default_rng(1).integers(0, 255, 100_000, dtype=np.uint8).tobytes())
    elif case == "empty":
        target.write_bytes(b"")
    else:
        target.write_text("Patient: DOE^JANE\n")
    before = store_snapshot(node)
    [outcome] = ingest(node, target)
    assert outcome.status == "rejected"
    assert expected in outcome.error
    assert "\n" not in outcome.error
    assert store_snapshot(node) == before
    assert not any(node.store.staging.iterdir())


def test_batch_with_bad_file_ingests_the_good_ones(node: Node, aperio_slide, generic_slide, tmp_path: Path) -> None:  # noqa: ANN001
    folder = tmp_path / "batch"
    folder.mkdir()
    shutil.copy(aperio_slide.path, folder / "a.svs")
    shutil.copy(generic_slide.path, folder / "b.tiff")
    _truncated(aperio_slide.path, folder / "c-broken.svs", 0.6)
    (folder / "notes.txt").write_text("not a slide")
    (folder / "link.svs").symlink_to(aperio_slide.path)
    outcomes = ingest(node, folder, workers=2)
    statuses = {Path(o.path).name: o.status for o in outcomes}
    assert statuses == {"a.svs": "ingested", "b.tiff": "ingested", "c-broken.svs": "rejected"}


def test_missing_input_fails_before_anything_happens(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        plan_ingest([tmp_path / "nope.svs"])


def test_description_merge_prefers_sidecar_over_defaults() -> None:
    merged = SlideDescription(stain="H&E").merged_over(SlideDescription(dataset="d", stain="x"))
    assert (merged.dataset, merged.stain) == ("d", "H&E")


# --------------------------------------------------------------------------------------------
# Modalities, as a pathologist expects them
# --------------------------------------------------------------------------------------------


def exported(home: Path, slide_id: str, folder: Path) -> list[Path]:
    """`slidebank export`: the stored DICOM files as any other DICOM reader gets them, level by level."""
    run_cli("export", slide_id, "--to", str(folder), home=home, check=True)
    return sorted((folder / slide_id).glob("*.dcm"))


def assert_frames_are_whole(files: list[Path]) -> None:
    """Every frame decodes to Rows×Columns: what DICOM requires and OpenSlide and pydicom rely on."""
    for path in files:
        dataset = pydicom.dcmread(path)
        frames = pydicom.pixels.pixel_array(dataset)  # raises on a frame of the wrong size
        if int(dataset.get("NumberOfFrames", 1)) == 1:
            frames = frames[None]
        assert frames.shape[1:3] == (dataset.Rows, dataset.Columns), path.name


def blob_headers(node: Node, slide_id: str) -> list[pydicom.Dataset]:
    """The stored DICOM files of a slide, decrypted and parsed (pixels included)."""
    headers = []
    for info in node.volume_files(slide_id):
        blob = node.open_blob(info)
        try:
            headers.append(pydicom.dcmread(io.BytesIO(blob.pread(0, blob.size))))
        finally:
            blob.close()
    return sorted(headers, key=lambda d: -int(d.TotalPixelMatrixColumns))


def test_generated_levels_have_whole_frames_that_openslide_reads(tmp_path: Path) -> None:
    """Sizes that are not multiples of the tile size: the levels ingest adds end in partial tiles,
    which must still be whole frames (wsidicom 0.31 writes them short; OpenSlide then fails with
    "Dimensional mismatch"). Both ways in: a JPEG SVS (wsidicomizer) and a JPEG DICOM (wsidicom)."""
    home = tmp_path / "node"
    svs = m.write_aperio_jpeg_svs(tmp_path / "in" / "odd-size.svs", width=200, height=150, tile=32, levels=1)
    [first] = json_lines(run_cli("ingest", str(svs), "--json", "--no-qc", home=home, check=True).stdout)
    svs_files = exported(home, first["slide_id"], tmp_path / "out-svs")
    dicom_source = tmp_path / "dicom-in" / "level0.dcm"  # level 0 alone: a JPEG DICOM WSI lacking its levels
    dicom_source.parent.mkdir()
    shutil.copy(svs_files[0], dicom_source)
    [second] = json_lines(run_cli("ingest", str(dicom_source), "--json", "--no-qc", home=home, check=True).stdout)
    dicom_files = exported(home, second["slide_id"], tmp_path / "out-dicom")

    expected = m.box_pyramid(m.rgb_pattern(200, 150), 4)
    for files in (svs_files, dicom_files):
        assert len(files) == 4
        assert_frames_are_whole(files)
        with openslide.OpenSlide(files[0]) as slide:
            assert slide.level_dimensions == ((200, 150), (100, 75), (50, 38), (25, 19))
            for level, (width, height) in enumerate(slide.level_dimensions):
                pixels = np.asarray(slide.read_region((0, 0), level, (width, height)).convert("RGB"))
                # The last row and column of an odd-sized level are averaged with black by wsidicom
                # 0.31's downsampler (left alone: a one-pixel edge of overview levels); the rest is right.
                assert psnr(pixels[:-1, :-1], expected[level][:-1, :-1]) > 30, f"level {level}"
    shown = json_lines(run_cli("slides", "show", second["slide_id"], "--json", home=home, check=True).stdout)[0]
    assert shown["provenance"]["conversion"] == "dicom-rewrite"  # frames copied, only the new levels encoded


def test_grey_brightfield_dicom_is_stored_losslessly_as_grey(node: Node, tmp_path: Path) -> None:
    paths = m.write_grey8_dicom(tmp_path / "grey", levels=1)  # 96×64 in 16-px tiles: 3 levels to add
    [outcome] = ingest(node, paths[0])
    assert outcome.status == "ingested", outcome.error
    assert outcome.method == "lossless-transcode"
    with open_wsidicom(node, outcome.slide_id) as stored:
        assert [level.size.width for level in stored.levels] == [96, 48, 24, 12]
        level0 = stored.read_region((0, 0), 0, (96, 64))
        assert level0.mode == "L"
        assert np.array_equal(np.asarray(level0), m.grey_pattern(96, 64, bits=8))
    headers = blob_headers(node, outcome.slide_id)
    assert {(d.PhotometricInterpretation, d.SamplesPerPixel, d.BitsStored) for d in headers} == {("MONOCHROME2", 1, 8)}
    assert {d.file_meta.TransferSyntaxUID for d in headers} == {JPEGLSLossless}
    assert np.array_equal(_total_pixel_matrix(headers[0]), m.grey_pattern(96, 64, bits=8))  # pydicom agrees
    for dataset in headers:  # whole frames on every level, generated ones included
        frames = pydicom.pixels.pixel_array(dataset)
        assert frames.reshape(-1, 16, 16).shape[0] == dataset.NumberOfFrames


def _total_pixel_matrix(dataset: pydicom.Dataset) -> np.ndarray:
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    across = -(-int(dataset.TotalPixelMatrixColumns) // columns)
    frames = pydicom.pixels.pixel_array(dataset).reshape(-1, rows, columns)
    down = len(frames) // across
    matrix = frames.reshape(down, across, rows, columns).transpose(0, 2, 1, 3).reshape(down * rows, across * columns)
    return matrix[: int(dataset.TotalPixelMatrixRows), : int(dataset.TotalPixelMatrixColumns)]


DEEP = "16-bit grey image: Slidebank stores 8-bit brightfield slides (RGB or grey)"
MULTICHANNEL = "multi-channel fluorescence image"
REFUSED_MODALITIES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "grey16-tiff": (lambda d: m.write_grey16_tiff(d / "grey16.tiff"), DEEP),
    "grey16-ome-tiff": (lambda d: m.write_grey16_tiff(d / "grey16.ome.tiff", ome=True), DEEP),
    "grey16-dicom": (lambda d: m.write_hanging_dicom(d / "hanging"), DEEP),  # the one that hung wsidicom
    "fluorescence-ome-tiff": (lambda d: m.write_multichannel_ome_tiff(d / "fluo.ome.tiff"),
                              "multi-channel fluorescence image (4 channels: DAPI, FITC, Cy3, Cy5; 16-bit)"),
    "fluorescence-dicom-16": (lambda d: m.write_multichannel_dicom(d / "fluo16", bits=16)[0],
                              "multi-channel fluorescence image (3 channels: DAPI, FITC, Cy3; 16-bit)"),
    "fluorescence-dicom-8": (lambda d: m.write_multichannel_dicom(d / "fluo8", bits=8, levels=2)[0],
                             "multi-channel fluorescence image (3 channels: DAPI, FITC, Cy3; 8-bit)"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED_MODALITIES))
def test_deep_and_multichannel_images_are_refused_from_their_headers(kind: str, tmp_path: Path) -> None:
    """Refused by `inspect`, before any converter runs: wsidicom 0.31 cannot encode 16-bit levels (and
    may hang on it), and drops the optical paths of multi-channel DICOM (8-bit ones were stored that way)."""
    make, reason = REFUSED_MODALITIES[kind]
    [source], _ = discover([make(tmp_path)])
    with pytest.raises(SlideRejected) as refused:
        inspect_source(source)
    message = str(refused.value)
    assert message.startswith(reason) and "\n" not in message
    assert "fluorescence archive" in refused.value.hint


def test_aperio_jpeg2000_is_labelled_as_stored_and_keeps_its_colours(node: Node, tmp_path: Path) -> None:
    """33005 (RGB code-streams): the tiles are copied and the files say JPEG 2000. 33003 (YCbCr):
    decoded by OpenSlide, which gets the colours right, and re-encoded; neither claims a copy it did not make."""
    rgb = m.write_aperio_j2k_svs(tmp_path / "j2k-rgb.svs", colorspace="rgb", mpp=0.5, width=200, height=150, levels=1)
    ycc = m.write_aperio_j2k_svs(tmp_path / "j2k-ycbcr.svs", colorspace="ycbcr", mpp=0.5, width=200, height=150,
                                 levels=1)
    outcomes = {Path(o.path).name: o for o in ingest(node, rgb, ycc)}
    for source, method, syntax in ((rgb, "tile-copy", JPEG2000), (ycc, "re-encoded", JPEGBaseline8Bit)):
        outcome = outcomes[source.name]
        assert outcome.status == "ingested", outcome.error
        detail = node.catalog.get_slide(outcome.slide_id)
        assert (outcome.method, detail["provenance"]["conversion"]) == (method, method)
        assert detail["transfer_syntax"] == syntax
        headers = blob_headers(node, outcome.slide_id)
        assert {d.file_meta.TransferSyntaxUID for d in headers} == {syntax}
        first = next(pydicom.encaps.generate_frames(headers[0].PixelData, number_of_frames=headers[0].NumberOfFrames))
        assert first[:2] == (b"\xff\x4f" if syntax == JPEG2000 else b"\xff\xd8")
        with open_wsidicom(node, outcome.slide_id) as stored, openslide.OpenSlide(source) as original:
            ours = np.asarray(stored.read_region((0, 0), 0, (200, 150)).convert("RGB"))
            theirs = np.asarray(original.read_region((0, 0), 0, (200, 150)).convert("RGB"))
        assert psnr(ours, theirs) > 40, source.name
    with tifffile.TiffFile(rgb) as tif, open(rgb, "rb") as handle:  # a copy is a copy: the same code-stream
        handle.seek(tif.pages[0].dataoffsets[0])
        code_stream = handle.read(tif.pages[0].databytecounts[0])
    headers = blob_headers(node, outcomes[rgb.name].slide_id)
    first = next(pydicom.encaps.generate_frames(headers[0].PixelData, number_of_frames=headers[0].NumberOfFrames))
    assert first[: len(code_stream)] == code_stream and len(first) - len(code_stream) <= 1  # DICOM pads to even


# --------------------------------------------------------------------------------------------
# Pixel size: the file's, else the submitter's, else unknown (and said so)
# --------------------------------------------------------------------------------------------


def pixel_spacing_mm(dataset: pydicom.Dataset) -> list[float]:
    return [float(v) for v in dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]


def test_pixel_size_from_the_command_line_or_stored_as_unknown(node: Node, node_home: Path, tmp_path: Path) -> None:
    """An Aperio JPEG 2000 SVS without 'MPP =' (opentile refuses those: read through OpenSlide)."""
    given = m.write_aperio_j2k_svs(tmp_path / "in" / "given.svs", colorspace="rgb", width=128, height=96)
    unknown = m.write_aperio_j2k_svs(tmp_path / "in" / "unknown.svs", colorspace="ycbcr", width=120, height=90)
    refused = run_cli("ingest", str(given), "--mpp", "0", "--json", "--no-qc", home=node_home)
    assert refused.returncode == 2 and "between 0.05 and 100" in refused.stdout + refused.stderr

    [with_mpp] = json_lines(run_cli("ingest", str(given), "--mpp", "0.25", "--json", "--no-qc", home=node_home,
                                    check=True).stdout)
    assert with_mpp["status"] == "ingested" and "warnings" not in with_mpp
    detail = node.catalog.get_slide(with_mpp["slide_id"])
    assert (detail["mpp_x"], detail["mpp_y"], detail["pixel_size_known"]) == (0.25, 0.25, True)
    assert detail["provenance"]["pixel_spacing"] == "supplied"
    spacings = [pixel_spacing_mm(d) for d in blob_headers(node, with_mpp["slide_id"])]
    assert spacings[0] == pytest.approx([0.00025, 0.00025]) and spacings[1] == pytest.approx([0.0005, 0.0005])

    result = run_cli("ingest", str(unknown), "--json", "--no-qc", home=node_home)
    assert result.returncode == 0, result.stderr
    assert "Could not determine pixel spacing" not in result.stderr  # wsidicomizer's, before it is given one
    [without] = json_lines(result.stdout)
    assert without["status"] == "ingested"
    [warning] = without["warnings"]
    assert warning.startswith("pixel size unknown") and "'MPP ='" in warning and "--mpp" in warning
    assert "resolution tags" not in warning  # OpenSlide's Aperio driver never reads them
    shown = json_lines(run_cli("slides", "show", without["slide_id"], "--json", home=node_home, check=True).stdout)[0]
    assert (shown["mpp_x"], shown["mpp_y"], shown["pixel_size_known"]) == (None, None, False)
    assert shown["provenance"]["pixel_spacing"] == "unknown"
    # DICOM WSI requires a Pixel Spacing: a nominal one, which the provenance calls nominal.
    assert pixel_spacing_mm(blob_headers(node, without["slide_id"])[0]) == [NOMINAL_SPACING_MM] * 2
    assert shown["provenance"]["dicom_pixel_spacing_mm"] == NOMINAL_SPACING_MM


def test_pixel_size_from_the_sidecar_fills_gaps_and_never_overrides_the_file(node: Node, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    m.write_aperio_j2k_svs(folder / "no-mpp.svs", colorspace="rgb")
    m.write_aperio_jpeg_svs(folder / "says-half.svs", mpp=0.5)
    sidecar = tmp_path / "meta.csv"
    sidecar.write_text("file,mpp\nno-mpp.svs,0.2527\nsays-half.svs,0.25\n")
    outcomes = {Path(o.path).name: o for o in ingest(node, folder, sidecar=sidecar)}
    assert {name: o.status for name, o in outcomes.items()} == {"no-mpp.svs": "ingested", "says-half.svs": "ingested"}
    supplied = node.catalog.get_slide(outcomes["no-mpp.svs"].slide_id)
    assert (supplied["mpp_x"], supplied["pixel_size_known"]) == (0.2527, True) and not outcomes["no-mpp.svs"].warnings
    assert pixel_spacing_mm(blob_headers(node, supplied["slide_id"])[0]) == pytest.approx([0.0002527] * 2)
    kept = node.catalog.get_slide(outcomes["says-half.svs"].slide_id)
    assert (kept["mpp_x"], kept["provenance"]["pixel_spacing"]) == (0.5, "file")
    [warning] = outcomes["says-half.svs"].warnings  # a disagreement is said, not silently resolved
    assert "0.25 µm/px" in warning and "0.5 µm/px" in warning
    assert outcomes["says-half.svs"].method == "tile-copy"  # the file's own pixel size: opentile copies


def test_hint_for_a_missing_pixel_size_fits_the_format(tmp_path: Path) -> None:
    """OpenSlide's Aperio driver reads only 'MPP ='; for generic TIFFs, the resolution tags are the way."""
    aperio = m.write_aperio_jpeg_svs_without_mpp(tmp_path / "a.svs")
    generic = tmp_path / "g.tiff"
    tifffile.imwrite(generic, m.rgb_pattern(64, 64), tile=(32, 32), photometric="rgb")
    hints = {}
    for path in (aperio, generic):
        [source], _ = discover([path])
        info = inspect_source(source)
        assert (info.mpp_x, info.mpp_y) == (None, None)
        hints[path.suffix] = resolve_pixel_size(info, None).warning or ""
    assert "'MPP ='" in hints[".svs"] and "resolution tags" not in hints[".svs"]
    assert "resolution tags" in hints[".tiff"]


def test_an_image_editors_resolution_is_not_a_pixel_size(tmp_path: Path) -> None:
    """72 dpi, what image editors write, reads as 352.8 µm/px through OpenSlide: no microscope's, so
    the slide's pixel size is unknown (or the supplied one), and the submitter is told why."""
    path = tmp_path / "72dpi.tiff"
    tifffile.imwrite(path, m.rgb_pattern(64, 64), tile=(32, 32), photometric="rgb", resolution=(72, 72),
                     resolutionunit="INCH")
    [source], _ = discover([path])
    info = inspect_source(source)
    assert info.mpp_x == pytest.approx(352.78, abs=0.01)
    unknown = resolve_pixel_size(info, None)
    assert (unknown.mpp, unknown.origin) == (None, "unknown")
    assert unknown.warning and unknown.warning.startswith("the file's pixel size (352.778 µm/px) is not a microscope's")
    supplied = resolve_pixel_size(info, 0.5)
    assert (supplied.mpp, supplied.origin) == ((0.5, 0.5), "supplied") and supplied.warning
