"""StoredSlide, the one reader of a stored slide: held against wsidicom (same stored files) and
OpenSlide (the original SVS), on a synthetic slide ingested as the CLI does (encrypted at rest).

Pixel comparisons are exact: the fast path decodes the stored JPEG frames with libjpeg-turbo's
accurate IDCT, as Pillow (inside wsidicom) and OpenSlide do, and a shortened decode keeps enough
rows for the chroma upsampling of the rows it returns.
"""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from wsidicom import WsiDicom

from conftest import json_lines, run_cli
from databases import open_node
from slidebank.slides.reader import (
    PROPERTY_NAME_MPP_X,
    PROPERTY_NAME_MPP_Y,
    PROPERTY_NAME_VENDOR,
    FrameCache,
    StoredSlide,
)
from slidebank.storage.blobstore import BlobFile, PlainFile


@dataclass
class Stored:
    home: Path
    slide_id: str
    source: Path

    def blobs(self) -> list[BlobFile]:
        node = open_node(self.home)
        try:
            return [node.open_blob(f) for f in node.catalog.stored_files(self.slide_id) if f.role == "volume"]
        finally:
            node.close()

    def open(self, **options: object) -> StoredSlide:
        return StoredSlide(self.blobs(), **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, aperio_slide) -> Stored:  # noqa: ANN001
    home = tmp_path_factory.mktemp("reader") / "node"
    run_cli("init", home=home, check=True)
    [ingested] = json_lines(
        run_cli("ingest", str(aperio_slide.path), "--no-qc", "--json", home=home, check=True).stdout
    )
    return Stored(home, ingested["slide_id"], aperio_slide.path)


@pytest.fixture(scope="module")
def slide(stored: Stored) -> Iterator[StoredSlide]:
    with stored.open() as opened:
        yield opened


@pytest.fixture(scope="module")
def wsi(stored: Stored) -> Iterator[WsiDicom]:
    blobs = stored.blobs()
    opened = WsiDicom.open_streams([blob.stream() for blob in blobs])
    yield opened
    opened.close()
    for blob in blobs:
        blob.close()


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the slide written again by wsidicom in other layouts."""
    return tmp_path_factory.mktemp("rewritten")


@pytest.fixture(scope="module")
def original(stored: Stored) -> Iterator[openslide.OpenSlide]:
    with openslide.OpenSlide(stored.source) as opened:
        yield opened


def wsidicom_region(wsi: WsiDicom, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """wsidicom's pixels of a region in level coordinates, black outside the level (as ours)."""
    stored_level = wsi.levels[level]
    out = np.zeros((height, width, 3), np.uint8)
    left, top = max(x, 0), max(y, 0)
    right, bottom = min(x + width, stored_level.size.width), min(y + height, stored_level.size.height)
    if left < right and top < bottom:
        region = wsi.read_region((left, top), stored_level.level, (right - left, bottom - top))
        out[top - y : bottom - y, left - x : right - x] = np.asarray(region.convert("RGB"))
    return out


def regions(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Aligned, unaligned, edge-crossing and outside regions (x, y, w, h) of a level."""
    return [
        (0, 0, tile, tile),  # one whole frame
        (tile, tile, 2 * tile, tile),  # whole frames, side by side
        (tile // 2 + 3, tile // 3 + 1, tile, tile),  # unaligned: four frames, partly
        (7, 5, 1, 1),  # one pixel
        (width - tile // 2, height - tile // 3, tile, tile),  # across the right and bottom edges
        (-tile // 2, -5, tile, tile),  # across the left and top edges
        (-40, -40, width + 80, height + 80),  # the whole level with a margin
        (width + 10, 0, 64, 64),  # wholly outside
    ]


# -- geometry and properties ----------------------------------------------------------------


def test_geometry_matches_wsidicom_and_openslide(slide: StoredSlide, wsi: WsiDicom,
                                                   original: openslide.OpenSlide) -> None:
    assert slide.level_dimensions == tuple((lv.size.width, lv.size.height) for lv in wsi.levels)
    assert slide.level_tile_dimensions == tuple((lv.tile_size.width, lv.tile_size.height) for lv in wsi.levels)
    assert slide.dimensions == original.dimensions and slide.level_count == original.level_count
    assert slide.level_dimensions == original.level_dimensions
    assert slide.level_downsamples == pytest.approx(original.level_downsamples)
    for downsample in (0.5, 1, 1.9, 2, 3, 4, 7.99, 8, 15, 16, 1000):
        assert slide.get_best_level_for_downsample(downsample) == original.get_best_level_for_downsample(downsample)
    assert all(slide.fast_levels), "tile-copied JPEG levels take the direct path"
    assert slide.stored_jpeg and slide.associated_images == {}


def test_properties_speak_openslide(slide: StoredSlide, wsi: WsiDicom, original: openslide.OpenSlide) -> None:
    properties = slide.properties
    assert properties[PROPERTY_NAME_VENDOR] == "slidebank"
    source_mpp_x = float(original.properties[openslide.PROPERTY_NAME_MPP_X])
    assert float(properties[PROPERTY_NAME_MPP_X]) == pytest.approx(source_mpp_x)
    assert float(properties[PROPERTY_NAME_MPP_Y]) == pytest.approx(wsi.mpp.height)
    assert properties["openslide.level-count"] == str(slide.level_count)
    for index, (width, height) in enumerate(slide.level_dimensions):
        assert properties[f"openslide.level[{index}].width"] == str(width)
        assert properties[f"openslide.level[{index}].height"] == str(height)
        downsample = float(properties[f"openslide.level[{index}].downsample"])
        assert downsample == pytest.approx(slide.level_downsamples[index])
        assert properties[f"openslide.level[{index}].tile-width"] == str(slide.level_tile_dimensions[index][0])
    assert all(isinstance(value, str) for value in properties.values()), "OpenSlide's properties are strings"


def test_known_mpp_overrides_and_missing_mpp_is_absent(stored: Stored, wsi: WsiDicom, rewritten: Path) -> None:
    with stored.open(mpp=(0.5, 0.52)) as given:
        assert given.mpp == (0.5, 0.52) and given.properties[PROPERTY_NAME_MPP_Y] == "0.52"
    with stored.open() as read:  # from the files' Pixel Spacing
        assert read.mpp == pytest.approx((0.25, 0.25))
    files = rewrite(wsi, rewritten / "no-pixel-spacing")
    for path in files:
        dataset = pydicom.dcmread(path)
        del dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
        dataset.save_as(path)
    with StoredSlide([PlainFile(f) for f in files]) as unknown:
        assert unknown.mpp is None
        assert PROPERTY_NAME_MPP_X not in unknown.properties and PROPERTY_NAME_MPP_Y not in unknown.properties


# -- pixels against wsidicom (same stored files): exact -------------------------------------


def test_regions_equal_wsidicom_on_every_level(slide: StoredSlide, wsi: WsiDicom) -> None:
    for level, (width, height) in enumerate(slide.level_dimensions):
        tile = slide.level_tile_dimensions[level][0]
        for x, y, w, h in regions(width, height, tile):
            ours = slide.read_level_array(level, (x, y), (w, h))
            assert ours.shape == (h, w, 3) and ours.dtype == np.uint8
            assert np.array_equal(ours, wsidicom_region(wsi, level, x, y, w, h)), (level, x, y, w, h)


def test_random_patches_equal_wsidicom_with_and_without_the_frame_cache(stored: Stored, wsi: WsiDicom) -> None:
    """Patches overlap, so cut decodes are cached and later extended: every pixel stays exact."""
    for cache in (FrameCache(64 << 20), FrameCache(0)):
        with stored.open(frame_cache=cache) as slide:
            rng = random.Random(11)
            for _ in range(150):
                level = rng.choice((0, 0, 0, 1, 2))
                width, height = slide.level_dimensions[level]
                w, h = rng.randint(1, 400), rng.randint(1, 400)
                x, y = rng.randrange(-50, width), rng.randrange(-50, height)
                ours = slide.read_level_array(level, (x, y), (w, h))
                assert np.array_equal(ours, wsidicom_region(wsi, level, x, y, w, h)), (level, x, y, w, h)
            assert cache.current_bytes > 0 or not cache.max_bytes, "frames decoded twice are kept"
        assert cache.current_bytes == 0, "closing a slide drops its frames"


def test_read_region_is_rgba_transparent_outside(slide: StoredSlide, wsi: WsiDicom) -> None:
    width, height = slide.dimensions
    image = slide.read_region((width - 100, height - 60), 0, (256, 128))
    assert isinstance(image, Image.Image) and image.mode == "RGBA" and image.size == (256, 128)
    pixels = np.asarray(image)
    assert (pixels[:60, :100, 3] == 255).all() and (pixels[60:, :, :] == 0).all() and (pixels[:, 100:] == 0).all()
    assert np.array_equal(pixels[..., :3], wsidicom_region(wsi, 0, width - 100, height - 60, 256, 128))
    outside = np.asarray(slide.read_region((-1000, -1000), 0, (50, 50)))
    assert not outside.any()
    assert slide.read_region((0, 0), 0, (0, 10)).size == (0, 10)


def test_array_variants_agree(slide: StoredSlide) -> None:
    location, size = (333, 517), (300, 200)
    array = slide.read_region_array(location, 0, size)
    assert np.array_equal(array, np.asarray(slide.read_region(location, 0, size))[..., :3])
    assert np.array_equal(slide.read_region(location, 0, size, as_array=True), array)  # tiffslide's spelling
    batch = np.full((2, 200, 300, 3), 7, np.uint8)
    slot = batch[1]
    assert slide.read_region_array(location, 0, size, out=slot) is slot
    assert np.array_equal(batch[1], array) and (batch[0] == 7).all()
    slide.read_region_array((-150, 0), 0, size, out=batch[0])
    assert not batch[0][:, :150].any(), "out is cleared outside the slide"
    with pytest.raises(ValueError):
        slide.read_region_array(location, 0, size, out=np.zeros((200, 300, 4), np.uint8))
    with pytest.raises(IndexError):
        slide.read_region((0, 0), slide.level_count, (10, 10))
    with pytest.raises(ValueError):
        slide.read_region((0, 0), 0, (-1, 10))


# -- pixels against OpenSlide on the original SVS ---------------------------------------------


def test_regions_equal_openslide_on_the_source(slide: StoredSlide, original: openslide.OpenSlide) -> None:
    """Tile copy keeps the JPEG bytes, so the stored slide decodes to the source's very pixels.

    At levels whose downsample is a whole number and locations on its grid OpenSlide reads whole
    pixels too; elsewhere it interpolates, and only the alpha (what lies inside) must agree.
    """
    for level, downsample in enumerate(slide.level_downsamples):
        width, height = slide.level_dimensions[level]
        tile = slide.level_tile_dimensions[level][0]
        for x, y, w, h in regions(width, height, tile):
            location = (round(x * downsample), round(y * downsample))
            ours = np.asarray(slide.read_region(location, level, (w, h)))
            theirs = np.asarray(original.read_region(location, level, (w, h)))
            if downsample == int(downsample):
                assert np.array_equal(ours, theirs), (level, location, (w, h))
            else:
                inside = theirs[..., 3] == 255
                assert (ours[..., 3][inside] == 255).all(), (level, location, (w, h))


def test_thumbnail_is_openslides(slide: StoredSlide, original: openslide.OpenSlide) -> None:
    ours, theirs = slide.get_thumbnail((300, 300)), original.get_thumbnail((300, 300))
    assert ours.mode == "RGB" and ours.size == theirs.size
    assert np.abs(np.asarray(ours).astype(int) - np.asarray(theirs)).max() <= 2


# -- tiles, for tile servers ------------------------------------------------------------------


def test_encoded_tiles_are_the_stored_frames(slide: StoredSlide, wsi: WsiDicom) -> None:
    for level in range(slide.level_count):
        columns, rows = slide.tile_grid(level)
        width, height = slide.level_dimensions[level]
        tile_width, tile_height = slide.level_tile_dimensions[level]
        for column, row in {(0, 0), (columns - 1, rows - 1), (columns // 2, rows // 2)}:
            uncut = slide.read_encoded_tile(level, column, row, crop_to_level=False)
            assert uncut == wsi.read_encoded_tile(wsi.levels[level].level, (column, row), crop_to_image_boundary=False)
            cut = slide.read_encoded_tile(level, column, row)
            expected = (min(tile_width, width - column * tile_width), min(tile_height, height - row * tile_height))
            decoded = Image.open(io.BytesIO(cut))
            assert decoded.format == "JPEG" and decoded.size == expected
            pixels = slide.read_tile(level, column, row)
            assert pixels.shape == (expected[1], expected[0], 3)
            # Cut in the DCT domain, not re-encoded: equal but for the chroma upsampling of the
            # last row and column, which no longer see the chroma beyond the new edge.
            cut_pixels = np.asarray(decoded.convert("RGB")).astype(int)
            assert np.array_equal(cut_pixels[:-1, :-1], pixels[:-1, :-1])
            assert np.abs(cut_pixels - pixels).max() <= 8
            theirs = wsi.read_tile(wsi.levels[level].level, (column, row)).convert("RGB")
            assert np.array_equal(pixels, np.asarray(theirs))
    with pytest.raises(IndexError):
        slide.read_encoded_tile(0, *slide.tile_grid(0))


# -- threads, life cycle ----------------------------------------------------------------------


def test_threads_read_the_same_pixels(stored: Stored) -> None:
    rng = random.Random(5)
    places = [(rng.randrange(0, 2800), rng.randrange(0, 2200)) for _ in range(120)]
    with stored.open(frame_cache=FrameCache(0)) as alone:
        expected = [alone.read_region_array(place, 0, (256, 256)) for place in places]
    with stored.open(frame_cache=FrameCache(8 << 20)) as shared:
        results: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []

        def work(start: int) -> None:
            try:
                for index in range(start, len(places), 4):
                    results[index] = shared.read_region_array(places[index], 0, (256, 256))
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert all(np.array_equal(results[index], expected[index]) for index in range(len(places)))


def test_close_closes_the_blobs(stored: Stored) -> None:
    slide = stored.open()
    blobs = list(slide._blobs)
    slide.read_region((0, 0), 0, (10, 10))
    slide.close()
    slide.close()
    with pytest.raises(ValueError):
        slide.read_region((0, 0), 0, (10, 10))
    with pytest.raises(ValueError):
        blobs[0].pread(0, 10)


# -- other layouts: the wsidicom fallback and the other offset tables -------------------------


def rewrite(wsi: WsiDicom, folder: Path, **options: object) -> list[Path]:
    """The slide's three smallest levels written again by wsidicom (plaintext files)."""
    folder.mkdir()
    files = wsi.save(folder, include_levels=[-1, -2, -3], include_labels=False, include_overviews=False,
                     include_thumbnails=False, **options)  # type: ignore[arg-type]
    return [Path(str(f)) for f in files]


@pytest.mark.parametrize(
    ("name", "fast"),
    [("jpeg2000", False), ("jpeg2000-lossless", False), ("jpeg-ls", False), ("uncompressed", False),
     ("extended-offset-table", True), ("no-offset-table", True)],
)
def test_other_layouts_read_like_wsidicom(wsi: WsiDicom, rewritten: Path, name: str, fast: bool) -> None:
    from wsidicom.codec import Channels, Jpeg2kSettings, JpegLsSettings, NumpySettings

    options: dict[str, object] = {
        "jpeg2000": {"transcoding": Jpeg2kSettings()},
        "jpeg2000-lossless": {"transcoding": Jpeg2kSettings(levels=0, channels=Channels.RGB)},
        "jpeg-ls": {"transcoding": JpegLsSettings()},
        "uncompressed": {"transcoding": NumpySettings()},
        "extended-offset-table": {"offset_table": "eot"},
        "no-offset-table": {"offset_table": "empty"},
    }[name]
    files = rewrite(wsi, rewritten / name, **options)
    with StoredSlide([PlainFile(f) for f in files]) as slide, WsiDicom.open(files) as theirs:
        assert slide.fast_levels == (fast,) * slide.level_count
        assert slide.level_dimensions == tuple((lv.size.width, lv.size.height) for lv in theirs.levels)
        for level, (width, height) in enumerate(slide.level_dimensions):
            for x, y, w, h in regions(width, height, slide.level_tile_dimensions[level][0]):
                assert np.array_equal(slide.read_level_array(level, (x, y), (w, h)),
                                      wsidicom_region(theirs, level, x, y, w, h)), (name, level, x, y, w, h)
        rgba = np.asarray(slide.read_region((-8, -8), 0, (64, 64)))
        assert (rgba[8:, 8:, 3] == 255).all() and not rgba[:8].any()
        assert slide.read_encoded_tile(0, 0, 0) == theirs.read_encoded_tile(theirs.levels[0].level, (0, 0))


@pytest.mark.parametrize("offset_table", [True, False])
def test_frames_in_several_fragments_are_joined(wsi: WsiDicom, rewritten: Path, offset_table: bool) -> None:
    """wsidicom 0.31 refuses (or misreads) such files, so the direct path reads them itself."""
    whole = rewrite(wsi, rewritten / f"whole-{offset_table}")
    split = rewritten / f"fragments-{offset_table}"
    split.mkdir()
    for path in whole:
        dataset = pydicom.dcmread(path)
        frames = list(generate_frames(dataset.PixelData, number_of_frames=int(dataset.NumberOfFrames)))
        dataset.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=offset_table)
        dataset.save_as(split / path.name)
    with StoredSlide([PlainFile(f) for f in sorted(split.iterdir())]) as slide, WsiDicom.open(whole) as theirs:
        for level, (width, height) in enumerate(slide.level_dimensions):
            for x, y, w, h in regions(width, height, slide.level_tile_dimensions[level][0]):
                assert np.array_equal(slide.read_level_array(level, (x, y), (w, h)),
                                      wsidicom_region(theirs, level, x, y, w, h)), (level, x, y, w, h)
        assert all(slide.fast_levels)


# -- real files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["gcp-jpeg.dcm", "highdicom-sm_image.dcm", "highdicom-sm_image_jpegls.dcm", "openslide-python-boxes_*.dcm"]
)
def test_real_dicom_files_read_like_wsidicom(shared_slides: Path, name: str) -> None:
    files = sorted((shared_slides / "dicom").glob(name))
    with WsiDicom.open(files) as theirs, StoredSlide([PlainFile(f) for f in files]) as slide:
        assert slide.level_dimensions == tuple((lv.size.width, lv.size.height) for lv in theirs.levels)
        for level, (width, height) in enumerate(slide.level_dimensions):
            for x, y, w, h in regions(width, height, slide.level_tile_dimensions[level][0]):
                assert np.array_equal(slide.read_level_array(level, (x, y), (w, h)),
                                      wsidicom_region(theirs, level, x, y, w, h)), (name, level, x, y, w, h)
