"""The synthetic slide generator: real readers accept its files, pixels look like tissue where the
mask says, output is deterministic, memory stays bounded, and the fake PHI is really in the bytes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile
from opentile import OpenTile

from slidebank.synth import (
    SyntheticSlide,
    default_label_text,
    tissue_mask,
    write_large_slide_from_tile,
    write_synthetic_slide,
)

pytestmark = pytest.mark.no_database  # opens no node's catalog: the PostgreSQL pass leaves it out

APERIO_SIZE = (3000, 2400)
APERIO_SEED = 7
GENERIC_SIZE = (1500, 1100)
GENERIC_SEED = 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def aperio(folder: Path) -> SyntheticSlide:
    return write_synthetic_slide(
        folder / "case.svs", *APERIO_SIZE, vendor="aperio", seed=APERIO_SEED,
        label_text="DOE^JANE MRN:90210417 S26-4711",
    )


@pytest.fixture(scope="module")
def generic(folder: Path) -> SyntheticSlide:
    return write_synthetic_slide(folder / "case.tiff", *GENERIC_SIZE, vendor="generic", seed=GENERIC_SEED)


def _rgb(slide: openslide.OpenSlide, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(slide.read_region(location, level, size).convert("RGB"))


def _saturation(rgb: np.ndarray) -> np.ndarray:
    values = rgb.astype(np.float32)
    high = values.max(axis=-1)
    return (high - values.min(axis=-1)) / np.maximum(high, 1.0)


def _window(mask: np.ndarray, size: int, inside: bool) -> tuple[int, int]:
    """Top-left (x, y) of a size x size window lying entirely inside (or outside) the mask."""
    target = mask if inside else ~mask
    integral = np.pad(target.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    ys, xs = np.nonzero(sums == size * size)
    assert len(ys), "no such window"
    pick = len(ys) // 2
    return int(xs[pick]), int(ys[pick])


# -- readers -----------------------------------------------------------------------------------


def test_aperio_is_read_by_openslide_as_aperio(aperio: SyntheticSlide) -> None:
    with openslide.OpenSlide(aperio.path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert slide.dimensions == APERIO_SIZE
        assert slide.level_dimensions == aperio.level_dimensions
        assert slide.level_count == len(aperio.level_dimensions) == 5  # 3000 -> ... -> 188 <= 256
        assert [round(d) for d in slide.level_downsamples] == [1, 2, 4, 8, 16]
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == aperio.mpp == 0.25
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == 0.25
        assert slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_images)
        assert slide.associated_images["label"].size == (400, 400)
        assert slide.associated_images["macro"].size == (1280, 431)
        assert max(slide.associated_images["thumbnail"].size) <= 1024
        assert slide.properties["aperio.Title"] == "DOE^JANE"
        assert slide.properties["aperio.Barcode"] == "S26-4711"


def test_aperio_is_opened_by_opentile_and_tifffile_as_svs(aperio: SyntheticSlide) -> None:
    with OpenTile.open(aperio.path) as tiler:
        assert type(tiler).__name__ == "SvsTiler"
        assert len(tiler.levels) == len(aperio.level_dimensions)
        assert tiler.levels[0].image_size.to_tuple() == APERIO_SIZE
        tile = tiler.get_tile(0, 0, 0, (1, 1))
        assert tile[:2] == b"\xff\xd8"
        assert imagecodecs.jpeg8_decode(tile).shape == (256, 256, 3)
        assert tiler.metadata.magnification == 40.0
        assert tiler.labels and tiler.overviews and tiler.thumbnails
        assert tiler.overviews[0].get_tile((0, 0))[:2] == b"\xff\xd8"
    with tifffile.TiffFile(aperio.path) as tif:
        assert tif.is_svs and not tif.is_bigtiff
        assert [s.name for s in tif.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
        assert tif.pages[0].description.startswith(
            "Aperio Image Library v12.0.15 \r\n3000x2400 (256x256) JPEG/RGB Q=90|AppMag = 40|MPP = 0.25|"
        )


def test_generic_is_a_generic_tiff_with_mpp(generic: SyntheticSlide) -> None:
    with openslide.OpenSlide(generic.path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.dimensions == GENERIC_SIZE
        assert slide.level_dimensions == generic.level_dimensions == ((1500, 1100), (750, 550), (375, 275), (188, 138))
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.25)
        assert "Patient: " in slide.properties["tiff.ImageDescription"]
        assert not slide.associated_images
    with tifffile.TiffFile(generic.path) as tif:
        assert all(page.is_tiled for page in tif.pages)


def test_odd_sizes_work_for_both_vendors(folder: Path) -> None:
    for vendor, name in (("aperio", "odd.svs"), ("generic", "odd.tiff")):
        written = write_synthetic_slide(folder / name, 1001, 777, vendor=vendor, seed=11)  # type: ignore[arg-type]
        assert written.level_dimensions == ((1001, 777), (501, 389), (251, 195))
        with openslide.OpenSlide(written.path) as slide:
            assert slide.level_dimensions == written.level_dimensions
            corner = _rgb(slide, (1001 - 37, 777 - 29), 0, (37, 29))
            assert corner.shape == (29, 37, 3)
            last = slide.level_dimensions[-1]
            assert _rgb(slide, (0, 0), slide.level_count - 1, last).shape == (last[1], last[0], 3)


def test_forced_bigtiff_aperio_is_still_read_by_both_libraries(folder: Path) -> None:
    written = write_synthetic_slide(folder / "big.svs", 1200, 900, seed=5, bigtiff=True, tile_size=240)
    with tifffile.TiffFile(written.path) as tif:
        assert tif.is_bigtiff and tif.is_svs
    with openslide.OpenSlide(written.path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_images)
        assert slide.properties["openslide.level[0].tile-width"] == "240"
    with OpenTile.open(written.path) as tiler:
        assert imagecodecs.jpeg8_decode(tiler.get_tile(0, 0, 0, (0, 0))).shape == (240, 240, 3)


# -- pixels ------------------------------------------------------------------------------------


def test_tissue_is_pink_and_purple_and_background_near_white(aperio: SyntheticSlide) -> None:
    mask = tissue_mask(*APERIO_SIZE, seed=APERIO_SEED)
    with openslide.OpenSlide(aperio.path) as slide:
        inside = _rgb(slide, _window(mask, 256, inside=True), 0, (256, 256)).astype(np.float32)
        outside = _rgb(slide, _window(mask, 256, inside=False), 0, (256, 256)).astype(np.float32)
    r, g, b = inside.reshape(-1, 3).mean(axis=0)
    assert inside.mean() < 215, "tissue should be clearly stained"
    assert r > g + 25 and b > g + 10, f"H&E tissue absorbs green most (pink/purple), got {(r, g, b)}"
    purple = (inside[..., 2] > inside[..., 0]) & (inside.mean(axis=-1) < 160)
    assert purple.mean() > 0.01, "expected haematoxylin-dark nuclei"
    assert outside.min() > 220 and outside.mean() > 235
    assert _saturation(outside).mean() < 0.03


def test_tissue_mask_agrees_with_pixels(aperio: SyntheticSlide) -> None:
    with openslide.OpenSlide(aperio.path) as slide:
        level = 2
        pixels = _rgb(slide, (0, 0), level, slide.level_dimensions[level])
    mask = tissue_mask(*APERIO_SIZE, seed=APERIO_SEED, downsample=4)
    assert mask.shape == pixels.shape[:2] == (600, 750)
    assert 0.3 <= mask.mean() <= 0.6
    saturation = _saturation(pixels)
    assert saturation[mask].mean() > 0.15 > 0.03 > saturation[~mask].mean()
    detected = saturation > 0.08
    iou = (detected & mask).sum() / (detected | mask).sum()
    assert iou > 0.95, iou


def test_tissue_mask_shape_coverage_and_determinism() -> None:
    mask = tissue_mask(1001, 777, seed=3, downsample=8)
    assert mask.shape == (98, 126) and mask.dtype == bool
    assert np.array_equal(mask, tissue_mask(1001, 777, seed=3, downsample=8))
    for seed in range(8):
        coverage = tissue_mask(8000, 6000, seed=seed, downsample=32).mean()
        assert 0.3 <= coverage <= 0.6, (seed, coverage)
    assert not np.array_equal(tissue_mask(800, 600, seed=1, downsample=4), tissue_mask(800, 600, seed=2, downsample=4))


def test_same_seed_same_pixels_and_other_seed_differs(folder: Path) -> None:
    paths = [folder / "det-a.svs", folder / "det-b.svs", folder / "det-c.svs"]
    for path, seed in zip(paths, (21, 21, 22), strict=True):
        write_synthetic_slide(path, 900, 700, seed=seed)
    regions = []
    for path in paths:
        with openslide.OpenSlide(path) as slide:
            regions.append(_rgb(slide, (200, 150), 0, (512, 512)))
    assert np.array_equal(regions[0], regions[1])
    assert not np.array_equal(regions[0], regions[2])
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_ihc_has_brown_dab(folder: Path) -> None:
    written = write_synthetic_slide(folder / "ihc.svs", 1600, 1200, seed=4, stain="IHC")
    mask = tissue_mask(1600, 1200, seed=4)
    with openslide.OpenSlide(written.path) as slide:
        pixels = _rgb(slide, (0, 0), 0, (1600, 1200)).astype(np.int16)
    tissue = pixels[mask]
    brown = (tissue[:, 0] > tissue[:, 1] + 15) & (tissue[:, 1] > tissue[:, 2] + 5) & (tissue.mean(axis=1) < 190)
    blue = (tissue[:, 2] > tissue[:, 0] + 5) & (tissue.mean(axis=1) < 170)
    assert brown.mean() > 0.01 and blue.mean() > 0.005
    assert pixels[~mask].mean() > 235


# -- PHI ---------------------------------------------------------------------------------------


def test_phi_strings_are_in_the_raw_bytes(aperio: SyntheticSlide, generic: SyntheticSlide) -> None:
    for written in (aperio, generic):
        raw = written.path.read_bytes()
        assert written.label_text in written.phi_strings
        assert len(written.phi_strings) >= 6
        missing = [s for s in written.phi_strings if s.encode() not in raw]
        assert not missing, missing
        assert all(len(s) >= 6 for s in written.phi_strings), written.phi_strings
    assert {"DOE^JANE", "90210417", "S26-4711"} <= set(aperio.phi_strings)
    raw = aperio.path.read_bytes()
    assert b"label 400x400 -> DOE^JANE MRN:90210417 S26-4711" in raw


def test_default_label_text_is_deterministic_fake_phi() -> None:
    text = default_label_text(42)
    assert text == default_label_text(42)
    assert re.fullmatch(r"[A-Z]+\^[A-Z]+ MRN:\d{8} S\d{2}-\d{4,5}", text), text
    assert len({default_label_text(seed) for seed in range(20)}) > 15


def test_bad_arguments_are_rejected_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "bad.svs"
    for kwargs in ({"tile_size": 250}, {"vendor": "hamamatsu"}, {"stain": "PAS"}, {"mpp": 0.0}):
        with pytest.raises(ValueError):
            write_synthetic_slide(target, 500, 400, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        write_synthetic_slide(target, 0, 400)
    assert not list(tmp_path.iterdir())


# -- large files and memory --------------------------------------------------------------------


def test_large_slide_from_repeated_tile_is_readable_at_every_level(folder: Path) -> None:
    written = write_large_slide_from_tile(folder / "large.svs", 8192, 8192)
    assert written.level_dimensions == ((8192, 8192), (4096, 4096), (2048, 2048), (1024, 1024), (512, 512))
    assert written.path.stat().st_size > 100 * 2**20, "tiles should be big (noisy, high quality)"
    with tifffile.TiffFile(written.path) as tif:
        assert tif.is_bigtiff and tif.is_svs
    with openslide.OpenSlide(written.path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert slide.level_dimensions == written.level_dimensions
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_images)
        # every level stores the same tile, so the tile-aligned 512x512 at (0, 0) is identical on all
        first = _rgb(slide, (0, 0), 0, (512, 512))
        for level in range(1, slide.level_count):
            assert np.array_equal(_rgb(slide, (0, 0), level, (512, 512)), first), level
        far = 512 * 2 * 3  # tile (3, 3) of level 1
        assert np.array_equal(_rgb(slide, (far, far), 1, (512, 512)), first)
        assert first.mean() < 225, "repeated tile should be tissue, not background"
    with OpenTile.open(written.path) as tiler:
        assert len(tiler.levels) == 5
        assert imagecodecs.jpeg8_decode(tiler.get_tile(0, 4, 0, (0, 0))).shape == (512, 512, 3)


@pytest.mark.parametrize("outcolorspace", ["YCBCR", "RGB"])
def test_large_slide_tags_follow_a_given_tile(folder: Path, outcolorspace: str) -> None:
    rng = np.random.default_rng(1)
    tile = np.clip(rng.normal((200, 120, 170), 20, (256, 256, 3)), 0, 255).astype(np.uint8)
    subsampling = (2, 2) if outcolorspace == "YCBCR" else (1, 1)
    data = imagecodecs.jpeg8_encode(tile, level=92, colorspace="RGB", outcolorspace=outcolorspace, subsampling=subsampling)
    expected = imagecodecs.jpeg8_decode(data).astype(np.int16)
    written = write_large_slide_from_tile(
        folder / f"given-{outcolorspace}.tiff", 700, 600, bytes(data), tile_size=256, vendor="generic", bigtiff=False
    )
    with openslide.OpenSlide(written.path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        got = _rgb(slide, (256, 256), 0, (256, 256)).astype(np.int16)
    assert np.abs(got - expected).max() <= 2
    with pytest.raises(ValueError, match="512x512"):
        write_large_slide_from_tile(folder / "wrong.svs", 1024, 1024, bytes(data), tile_size=512)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_generation_memory_stays_small(tmp_path: Path) -> None:
    """Peak RSS of a child writing a 5000x3000 slide (tiles are streamed, never a full level)."""
    # VmHWM, not ru_maxrss: Linux carries the forking parent's (pytest's) peak into the child's ru_maxrss.
    script = (
        "import json, re, sys, time\n"
        "from pathlib import Path\n"
        "from slidebank.synth import write_synthetic_slide\n"
        "def hwm():\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1))\n"
        "before = hwm()\n"
        "t = time.perf_counter()\n"
        "write_synthetic_slide(Path(sys.argv[1]), 5000, 3000, seed=9)\n"
        "print(json.dumps({'before': before, 'peak': hwm(), 'seconds': time.perf_counter() - t}))\n"
    )
    out = tmp_path / "rss.svs"
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    peak_mib = stats["peak"] / 1024
    # a full RGB level 0 alone would be 43 MiB; the whole pyramid as arrays ~57 MiB
    assert peak_mib < 250, stats
    assert stats["peak"] - stats["before"] < 120 * 1024, stats
    with openslide.OpenSlide(out) as slide:
        assert slide.dimensions == (5000, 3000)
