"""Ingest pipeline on real and synthetic slides: validation, de-identification, conversion, storage."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
import tifffile

from conftest import open_stored_slide
from slidebank.catalog.records import SlideDescription
from slidebank.ingest.pipeline import IngestOutcome
from slidebank.ingest.runner import plan_ingest, run_ingest
from slidebank.node import Node

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
    with open_stored_slide(node, outcome.slide_id) as stored, openslide.OpenSlide(source) as original:
        region = (600, 900), (1024, 1024)
        ours = np.asarray(stored.read_region(region[0], 0, region[1]).convert("RGB"))
        theirs = np.asarray(original.read_region(region[0], 0, region[1]).convert("RGB"))
    assert np.array_equal(ours, theirs)


def test_reencoded_pyramid_keeps_fidelity(node: Node, shared_slides: Path) -> None:
    source = shared_slides / "tiff/openslide-python-boxes.tiff"
    [outcome] = ingest(node, source)
    assert outcome.status == "ingested" and outcome.method == "re-encoded"
    with open_stored_slide(node, outcome.slide_id) as stored, openslide.OpenSlide(source) as original:
        size = original.dimensions
        ours = np.asarray(stored.read_region((0, 0), 0, size).convert("RGB"))
        theirs = np.asarray(original.read_region((0, 0), 0, size).convert("RGB"))
        assert stored.levels[0].size.width == 300  # one 512-px tile: no lower level needed
    assert psnr(ours, theirs) > 40


def test_reencoded_synthetic_region_keeps_fidelity(node: Node, generic_slide, tmp_path: Path) -> None:  # noqa: ANN001
    """A losslessly compressed (deflate) single-level TIFF must be re-encoded, levels built: > 40 dB."""
    with openslide.OpenSlide(generic_slide.path) as original:
        pixels = np.asarray(original.read_region((0, 0), 0, original.dimensions).convert("RGB"))
    source, no_spacing = tmp_path / "deflate.tiff", tmp_path / "no-spacing.tiff"
    tifffile.imwrite(no_spacing, pixels, tile=(256, 256), compression="zlib", photometric="rgb")
    [refused] = ingest(node, no_spacing)
    assert refused.status == "rejected" and "µm/px" in refused.error
    per_cm = 10_000 / 0.25  # 0.25 µm per pixel
    tifffile.imwrite(
        source, pixels, tile=(256, 256), compression="zlib", photometric="rgb",
        resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
    )
    [outcome] = ingest(node, source)
    assert outcome.status == "ingested" and outcome.method == "re-encoded", outcome
    with open_stored_slide(node, outcome.slide_id) as stored:
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
    for accession in ("PATIENT-42", "S26-0777", "A1"):
        assert accession not in flat, f"{accession}: submitter identifiers are pseudonymised"
        assert accession.encode() not in (node.settings.home / "catalog.sqlite").read_bytes()
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
        spans = list(zip(page.dataoffsets, page.databytecounts))
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
