"""Special-modality test slides (slidebank.synth.modalities): the field's readers recognise each file
for what it is, and the pinned wsidicom/wsidicomizer/opentile behave with them as the ingest report
says (16-bit pyramids fail or hang, generated edge frames are short, Aperio JPEG 2000 tiles are
mislabelled or mis-coloured). A library test that starts failing after an upgrade means the upstream
bug is fixed: re-check the matching workaround in Slidebank before deleting the test.

Slidebank's own ingest behaviour with these slides is tested in test_ingest.py and
test_ingest_batch.py; the pins below say why it works around what it does."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.pixels import pixel_array  # not Dataset.pixel_array: wsidicomizer turns on pydicom's v4 behaviour
from pydicom.uid import ExplicitVRLittleEndian, VLWholeSlideMicroscopyImageStorage
from wsidicom import WsiDicom
from wsidicom.codec import Channels, Encoder, Jpeg2kSettings, JpegLsSettings, NumpySettings, Settings

from slidebank.synth import modalities as m

pytestmark = pytest.mark.no_database  # opens no node's catalog: the PostgreSQL pass leaves it out

def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def read_full(wsi: WsiDicom, level: int = 0, path: str | None = None) -> np.ndarray:
    lvl = wsi.levels[level]
    return np.asarray(wsi.read_region((0, 0), lvl.level, (lvl.size.width, lvl.size.height), path=path))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("modalities")


# --------------------------------------------------------------------------------------------
# Generators: small, fast, deterministic
# --------------------------------------------------------------------------------------------

WRITERS = {
    "hanging": lambda d: [m.write_hanging_dicom(d / "hanging")],
    "grey8": lambda d: m.write_grey8_dicom(d / "grey8"),
    "grey16-tiff": lambda d: [m.write_grey16_tiff(d / "grey16.tiff")],
    "grey16-ome": lambda d: [m.write_grey16_tiff(d / "grey16.ome.tiff", ome=True)],
    "fluo-ome": lambda d: [m.write_multichannel_ome_tiff(d / "fluo.ome.tiff", channels=5)],
    "fluo-dicom": lambda d: m.write_multichannel_dicom(d / "fluo", channels=4, levels=2),
    "j2k-ycbcr": lambda d: [m.write_aperio_j2k_svs(d / "ycbcr.svs")],
    "j2k-rgb": lambda d: [m.write_aperio_j2k_svs(d / "rgb.svs", colorspace="rgb")],
    "jpeg-nompp": lambda d: [m.write_aperio_jpeg_svs_without_mpp(d / "jpeg.svs")],
    "jpeg": lambda d: [m.write_aperio_jpeg_svs(d / "jpeg-mpp.svs", width=200, height=150, levels=1)],
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_generators_are_small_fast_and_deterministic(kind: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    first = WRITERS[kind](tmp_path / "a")
    assert time.perf_counter() - started < 1.0
    assert sum(p.stat().st_size for p in first) < 1_000_000
    second = WRITERS[kind](tmp_path / "b")

    def pixels(path: Path) -> bytes:  # UIDs (DICOM) and the OME UUID differ per run; pixels must not
        return pydicom.dcmread(path).PixelData if path.suffix == ".dcm" else tifffile.imread(path).tobytes()

    assert [pixels(p) for p in first] == [pixels(p) for p in second]


def test_patterns_exercise_the_whole_range() -> None:
    grey = m.grey_pattern(96, 64, bits=16)
    assert grey.dtype == np.uint16 and grey.max() > 50_000 and grey.min() < 4096
    fluo = m.channel_pattern(4, 96, 64)
    assert fluo.shape == (4, 64, 96) and fluo.dtype == np.uint16
    assert all(np.percentile(c, 50) < 0.1 * 65535 < c.max() for c in fluo)  # dark background, bright spots
    levels = m.box_pyramid(fluo, 3)
    assert [lvl.shape for lvl in levels] == [(4, 64, 96), (4, 32, 48), (4, 16, 24)]


# --------------------------------------------------------------------------------------------
# DICOM: pydicom and wsidicom see what was meant
# --------------------------------------------------------------------------------------------


def test_hanging_dicom_is_a_16bit_monochrome_single_level_wsi(folder: Path) -> None:
    path = m.write_hanging_dicom(folder / "hanging")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == VLWholeSlideMicroscopyImageStorage
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.BitsAllocated, ds.BitsStored, ds.SamplesPerPixel) == (16, 16, 1)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.Columns, ds.Rows) == (50, 50, 10, 10)
    assert ds.NumberOfFrames == 25 and ds.DimensionOrganizationType == "TILED_FULL"
    with WsiDicom.open([str(path)]) as wsi:
        assert len(wsi.levels) == 1
        region = wsi.read_region((0, 0), 0, (50, 50))
        assert region.mode == "I"  # wsidicom hands 16-bit grey out as Pillow 32-bit integers
        assert np.array_equal(np.asarray(region), m.grey_pattern(50, 50, bits=16))


def test_highdicom_reads_the_16bit_total_pixel_matrix(folder: Path) -> None:
    """An independent reader (highdicom, optional) assembles the same total pixel matrix from the tiles."""
    hd = pytest.importorskip("highdicom")
    image = hd.imread(m.write_hanging_dicom(folder / "highdicom"))
    matrix = image.get_total_pixel_matrix(dtype=np.uint16, apply_real_world_transform=False,
                                          apply_modality_transform=False, apply_presentation_lut=False)
    assert np.array_equal(matrix, m.grey_pattern(50, 50, bits=16))


def test_grey8_dicom_is_an_8bit_monochrome_pyramid(folder: Path) -> None:
    paths = m.write_grey8_dicom(folder / "grey8", levels=3)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert {h.SeriesInstanceUID for h in headers} == {headers[0].SeriesInstanceUID}
    assert [(h.BitsStored, h.PhotometricInterpretation) for h in headers] == [(8, "MONOCHROME2")] * 3
    with WsiDicom.open([str(p) for p in paths]) as wsi:
        assert [lvl.size.width for lvl in wsi.levels] == [96, 48, 24]
        assert wsi.read_region((0, 0), 0, (8, 8)).mode == "L"
        expected = m.box_pyramid(m.grey_pattern(96, 64, bits=8), 3)
        for index in range(3):
            assert np.array_equal(read_full(wsi, index), expected[index])


def test_multichannel_dicom_has_one_optical_path_per_channel_with_colour(folder: Path) -> None:
    paths = m.write_multichannel_dicom(folder / "fluo", channels=3, levels=2)
    ds = pydicom.dcmread(paths[0])
    assert (ds.BitsStored, ds.PhotometricInterpretation, ds.NumberOfOpticalPaths) == (16, "MONOCHROME2", 3)
    assert ds.NumberOfFrames == 3 * 4 * 3  # channels × tiled 4×3 (64×48 in 16 px tiles)
    assert [float(p.IlluminationWaveLength) for p in ds.OpticalPathSequence] == [358.0, 495.0, 550.0]
    assert all(p.IlluminationTypeCodeSequence[0].CodeValue == "111743" for p in ds.OpticalPathSequence)
    # TILED_FULL frame order: column, row, focal plane, then optical path (in OpticalPathSequence order).
    frames = pixel_array(ds).reshape(3, 3, 4, 16, 16).transpose(0, 1, 3, 2, 4).reshape(3, 48, 64)
    assert np.array_equal(frames, m.channel_pattern(3, 64, 48))
    with WsiDicom.open([str(p) for p in paths]) as wsi:
        assert sorted(wsi.levels[0].optical_paths) == ["0", "1", "2"]
        luts = {op.identifier: op.lut.table[:, -1].tolist() for op in wsi.metadata.pyramid.optical_paths}
    assert luts == {"0": [0, 0, 65535], "1": [0, 65535, 0], "2": [65535, 65535, 0]}  # DAPI blue, FITC green, Cy3 yellow


def test_openslide_detects_dicom_but_does_not_open_monochrome(folder: Path) -> None:
    path = m.write_grey8_dicom(folder / "grey8-os", levels=1)[0]
    assert openslide.OpenSlide.detect_format(str(path)) == "dicom"
    with pytest.raises(openslide.OpenSlideError):
        openslide.OpenSlide(path)


# --------------------------------------------------------------------------------------------
# TIFF and OME-TIFF: tifffile and OpenSlide
# --------------------------------------------------------------------------------------------


def test_grey16_tiff_is_a_tiled_uint16_pyramid_with_resolution(folder: Path) -> None:
    path = m.write_grey16_tiff(folder / "grey16.tiff", mpp=0.5)
    with tifffile.TiffFile(path) as tif:
        assert not tif.is_ome
        pages = list(tif.pages)
        assert [p.shape for p in pages] == [(64, 96), (32, 48), (16, 24)]
        assert all(p.is_tiled and p.dtype == np.uint16 and p.samplesperpixel == 1 for p in pages)
        assert [int(p.subfiletype) for p in pages] == [0, 1, 1]
        assert pages[0].tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert pages[0].tags["XResolution"].value == (20000, 1)
        assert np.array_equal(pages[0].asarray(), m.grey_pattern(96, 64, bits=16))
    assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
    with openslide.OpenSlide(path) as slide:
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert slide.level_count == 3
        shown = np.asarray(slide.read_region((0, 0), 0, (96, 64)))[..., 0]
    # OpenSlide (libtiff RGBA) shows 16-bit grey as its high byte: no window, no level.
    assert np.abs(shown.astype(int) - (m.grey_pattern(96, 64, bits=16) >> 8)).max() <= 1


def test_grey16_ome_tiff_keeps_the_pyramid_in_subifds(folder: Path) -> None:
    path = m.write_grey16_tiff(folder / "grey16.ome.tiff", ome=True, mpp=0.5)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and len(tif.pages) == 1
        series = tif.series[0]
        assert series.axes == "YX" and series.dtype == np.uint16
        assert [lvl.shape for lvl in series.levels] == [(64, 96), (32, 48), (16, 24)]
        pixels = ET.fromstring(tif.ome_metadata).find(".//{*}Pixels")
        assert pixels is not None and float(pixels.get("PhysicalSizeX")) == 0.5
    with openslide.OpenSlide(path) as slide:  # generic TIFF reader: SubIFD levels are invisible
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_count == 1


def test_multichannel_ome_tiff_has_named_coloured_channels(folder: Path) -> None:
    path = m.write_multichannel_ome_tiff(folder / "fluo.ome.tiff", channels=4, mpp=0.65)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CYX" and series.shape == (4, 64, 96) and series.dtype == np.uint16
        pages = [tif.pages.get(i, aspage=True) for i in range(len(tif.pages))]  # TiffPage, not TiffFrame
        assert len(pages) == 4 and all(p.is_tiled and p.samplesperpixel == 1 for p in pages)
        assert [lvl.shape for lvl in series.levels] == [(4, 64, 96), (4, 32, 48), (4, 16, 24)]
        root = ET.fromstring(tif.ome_metadata)
        pixels = root.find(".//{*}Pixels")
        assert pixels is not None and float(pixels.get("PhysicalSizeY")) == 0.65
        channels = root.findall(".//{*}Channel")
        assert [c.get("Name") for c in channels] == ["DAPI", "FITC", "Cy3", "Cy5"]
        assert int(channels[0].get("Color")) == 0x0000FFFF  # RGBA blue
        assert np.array_equal(series.asarray(), m.channel_pattern(4, 96, 64))
        assert np.array_equal(series.levels[2].asarray(), m.box_pyramid(m.channel_pattern(4, 96, 64), 3)[2])
    with openslide.OpenSlide(path) as slide:  # OpenSlide shows the first channel only, as grey
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.dimensions == (96, 64) and slide.level_count == 1


# --------------------------------------------------------------------------------------------
# Aperio SVS: JPEG 2000 and no pixel size
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("colorspace", "compression"), [("ycbcr", 33003), ("rgb", 33005)])
def test_j2k_svs_is_aperio_without_mpp(folder: Path, colorspace: str, compression: int) -> None:
    path = m.write_aperio_j2k_svs(folder / f"j2k-{colorspace}.svs", colorspace=colorspace)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and int(page.compression) == compression
        assert page.description.startswith("Aperio Image Library") and "MPP" not in page.description
    assert openslide.OpenSlide.detect_format(str(path)) == "aperio"
    with openslide.OpenSlide(path) as slide:
        assert openslide.PROPERTY_NAME_MPP_X not in slide.properties
        assert slide.level_dimensions == ((128, 96), (64, 48), (32, 24))
        rgb = np.asarray(slide.read_region((0, 0), 0, (128, 96)).convert("RGB"))
    assert psnr(rgb, m.rgb_pattern(128, 96)) > 40  # OpenSlide decodes both colour spaces correctly


def test_jpeg_svs_without_mpp_is_aperio_without_mpp(folder: Path) -> None:
    path = m.write_aperio_jpeg_svs_without_mpp(folder / "jpeg-nompp.svs")
    assert openslide.OpenSlide.detect_format(str(path)) == "aperio"
    with openslide.OpenSlide(path) as slide:
        assert openslide.PROPERTY_NAME_MPP_X not in slide.properties
        assert slide.level_count == 3


def test_jpeg_svs_with_mpp_is_read_at_its_pixel_size(folder: Path) -> None:
    path = m.write_aperio_jpeg_svs(folder / "jpeg-mpp.svs", mpp=0.25, width=200, height=150, levels=1)
    with openslide.OpenSlide(path) as slide:
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.25
        assert slide.level_dimensions == ((200, 150),)
        rgb = np.asarray(slide.read_region((0, 0), 0, (200, 150)).convert("RGB"))
    assert psnr(rgb, m.rgb_pattern(200, 150)) > 35  # JPEG at quality 90, 4:2:0


def test_openslide_aperio_driver_ignores_tiff_resolution_tags(folder: Path) -> None:
    """Why Slidebank's hint for an SVS without 'MPP =' is not "set the TIFF resolution tags"."""
    path = m.write_aperio_jpeg_svs(folder / "resolution.svs", mpp=None, tiff_resolution_mpp=0.5)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].tags["XResolution"].value == (20000, 1)
    with openslide.OpenSlide(path) as slide:
        assert slide.properties["tiff.XResolution"] == "20000"
        assert openslide.PROPERTY_NAME_MPP_X not in slide.properties


def test_opentile_refuses_an_svs_without_mpp(folder: Path) -> None:
    """Why Slidebank reads such slides through OpenSlide (and cannot copy their tiles)."""
    from opentile import OpenTile

    with pytest.raises(KeyError, match="MPP"):
        OpenTile.open(m.write_aperio_jpeg_svs_without_mpp(folder / "opentile-nompp.svs"), 512)


# --------------------------------------------------------------------------------------------
# What the pinned libraries do with them, and the workarounds that were verified
# --------------------------------------------------------------------------------------------


def test_wsidicom_cannot_encode_the_16bit_tiles_it_decodes(folder: Path) -> None:
    """Root cause 1 of the 'hang': 16-bit tiles decode to mode "I", which every encoder refuses."""
    with WsiDicom.open([str(m.write_hanging_dicom(folder / "root-cause"))]) as wsi:
        assert wsi.read_region((0, 0), 0, (20, 20)).mode == "I"
    tile = Image.fromarray(np.full((10, 10), 1000, dtype=np.uint16)).convert("I")
    for settings in (NumpySettings(bits=16, channels=Channels.GRAYSCALE),
                     Jpeg2kSettings(levels=0, bits=16, channels=Channels.GRAYSCALE),
                     JpegLsSettings(level=0, bits=16, channels=Channels.GRAYSCALE)):
        with pytest.raises(ValueError, match="Unsupported mode: I"):
            Encoder.create_for_settings(settings).encode(tile)


def test_wsidicom_completion_tracker_ignores_cancellation() -> None:
    """Root cause 2: an accumulator already in wait_for_zero is not woken when the pipeline cancels."""
    from wsidicom.thread import CancellationToken, CompletionTracker

    tracker, token = CompletionTracker(), CancellationToken()
    tracker.increment()  # a downsample task queued, never to be run once the dispatcher stops
    waiter = threading.Thread(target=tracker.wait_for_zero, daemon=True)
    waiter.start()
    token.cancel(ValueError("Unsupported mode: I."))
    waiter.join(0.2)
    assert waiter.is_alive()  # this is PyramidTileAccumulator.shutdown's untimed join, forever
    tracker.decrement()
    waiter.join(2)
    assert not waiter.is_alive()


def test_wsidicom_writes_short_edge_frames_in_generated_levels(folder: Path) -> None:
    """Edge blocks of generated levels are encoded at their reduced size: native frames come out short."""
    paths = m.write_grey8_dicom(folder / "short-frames", levels=1)  # 96×64 in 16 px tiles: odd tiled sizes
    out = folder / "short-frames-out"
    with WsiDicom.open([str(p) for p in paths]) as wsi:
        files = wsi.save(out, add_missing_levels=True, workers=1, include_labels=False, include_overviews=False,
                         include_thumbnails=False)
    smallest = min((pydicom.dcmread(f) for f in files), key=lambda d: d.TotalPixelMatrixColumns)
    assert (smallest.TotalPixelMatrixColumns, smallest.Rows, smallest.Columns) == (12, 16, 16)
    assert len(smallest.PixelData) == 16 * 8  # one 16×8 frame where 16×16 is required
    with pytest.raises(ValueError):
        pixel_array(smallest)


ORDER_PROBE = """
import sys, numpy as np
from pathlib import Path
from wsidicom import WsiDicom
from slidebank.synth import modalities as m
paths = m.write_multichannel_dicom(Path(sys.argv[1]), channels=3, bits=8)
with WsiDicom.open([str(p) for p in paths]) as wsi:
    order = wsi.levels[0].optical_paths
    expected = m.channel_pattern(3, 64, 48, 8)
    regions = [np.asarray(wsi.read_region((0, 0), 0, (64, 48), path=str(c))) for c in range(3)]
    right = [np.array_equal(region, expected[c]) for c, region in enumerate(regions)]
print(order, right)
"""


def test_wsidicom_optical_path_order_depends_on_the_hash_seed(tmp_path: Path) -> None:
    """wsidicom builds optical path lists from sets: with several paths in a TILED_FULL instance,
    read_region(path=...) can return another channel's frames, and save() can write them under the
    wrong identifier. PYTHONHASHSEED=0 makes one such process deterministic."""
    result = subprocess.run([sys.executable, "-c", ORDER_PROBE, str(tmp_path / "fluo")], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONHASHSEED": "0"}, check=True)
    order, right = result.stdout.strip().split("] [")
    assert order + "]" != "['0', '1', '2']" and "False" in right


def _identifiers(sequence):  # dataset order, not set order
    if sequence is None:
        return ["0"]
    return list(dict.fromkeys(str(item.OpticalPathIdentifier) for item in sequence))


@pytest.fixture
def ordered_optical_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reference workaround (verified here): keep optical paths in OpticalPathSequence order."""
    from wsidicom.group.group import Instances
    from wsidicom.instance.tile_index.tile_index import TileIndex

    def read(cls, datasets):
        return list(dict.fromkeys(p for ds in datasets for p in _identifiers(ds.optical_path_sequence))) or ["0"]

    def group_paths(self):
        return list(dict.fromkeys(p for instance in self.instances.values() for p in instance.optical_paths))

    monkeypatch.setattr(TileIndex, "_get_path_identifers", staticmethod(_identifiers))
    monkeypatch.setattr(TileIndex, "_read_optical_paths_from_datasets", classmethod(read))
    monkeypatch.setattr(Instances, "optical_paths", property(group_paths))


class TileSafeEncoder(Encoder):
    """Reference workaround (verified here): uint16 for Pillow mode "I" and edge tiles padded to full frames.

    Slidebank's `ingest.convert.FullFrameEncoder` does the padding; the mode "I" part is what storing
    16-bit slides would add (today they are refused before conversion)."""

    def __init__(self, inner: Encoder, tile: tuple[int, int]) -> None:
        super().__init__(inner.settings)
        self._inner, self._tile = inner, tile

    def encode(self, image: Image.Image | np.ndarray) -> bytes:
        array = np.asarray(image)
        if isinstance(image, Image.Image) and image.mode == "I":
            array = np.clip(array, 0, (1 << self._inner.bits) - 1).astype(np.uint16)
        height, width = array.shape[:2]
        if (width, height) != self._tile:
            padded = np.zeros((self._tile[1], self._tile[0], *array.shape[2:]), dtype=array.dtype)
            padded[:height, :width] = array
            array = padded
        return self._inner.encode(array)

    @property
    def lossy(self) -> bool:
        return self._inner.lossy

    @classmethod
    def supports_settings(cls, settings: Settings) -> bool:
        return True

    @classmethod
    def is_available(cls) -> bool:
        return True


@pytest.mark.parametrize(
    "settings",
    [Jpeg2kSettings(levels=0, bits=16, channels=Channels.GRAYSCALE),
     JpegLsSettings(level=0, bits=16, channels=Channels.GRAYSCALE),
     NumpySettings(bits=16, channels=Channels.GRAYSCALE)],
    ids=["jpeg2000-lossless", "jpeg-ls-lossless", "uncompressed"],
)
def test_16bit_multichannel_pyramid_with_the_tile_safe_encoder(
    folder: Path, settings: Settings, ordered_optical_paths: None
) -> None:
    """The recommended path: a lossless, readable, full 16-bit pyramid with every optical path kept."""
    name = type(settings).__name__
    paths = m.write_multichannel_dicom(folder / f"safe-{name}", channels=3, width=80, height=48)
    with WsiDicom.open([str(p) for p in paths]) as wsi:
        encoder = TileSafeEncoder(Encoder.create_for_settings(settings), (16, 16))
        files = wsi.save(folder / f"safe-{name}-out", add_missing_levels=True, transcoding=encoder,
                         force_transcoding=True, workers=1, include_labels=False, include_overviews=False,
                         include_thumbnails=False)
    expected = m.box_pyramid(m.channel_pattern(3, 80, 48), 4)
    with WsiDicom.open([str(f) for f in files]) as out:
        assert [lvl.size.width for lvl in out.levels] == [80, 40, 20, 10]
        for path in ("0", "1", "2"):
            assert np.array_equal(read_full(out, 0, path), expected[0][int(path)])  # lossless
            for index in range(1, 4):  # generated levels: box means, within rounding
                got = read_full(out, index, path).astype(int)
                assert np.abs(got - expected[index][int(path)]).max() <= 2
    for f in files:
        ds = pydicom.dcmread(f)
        assert (ds.BitsStored, ds.PhotometricInterpretation, ds.NumberOfOpticalPaths) == (16, "MONOCHROME2", 3)
        assert ds.file_meta.TransferSyntaxUID == settings.transfer_syntax
        assert pixel_array(ds) is not None  # every frame full size, decodable by pydicom
        if ds.TotalPixelMatrixColumns == 80:  # what any other reader sees: frames under their identifiers
            ids = [int(p.OpticalPathIdentifier) for p in ds.OpticalPathSequence]
            frames = pixel_array(ds).reshape(3, 3, 5, 16, 16).transpose(0, 1, 3, 2, 4).reshape(3, 48, 80)
            assert all(np.array_equal(frames[k], expected[0][ids[k]]) for k in range(3))


def test_opentile_mislabels_33005_and_miscolours_33003(folder: Path) -> None:
    """Aperio JPEG 2000 through wsidicomizer as Slidebank calls it (JPEG re-encode settings)."""
    from wsidicom.codec import JpegSettings, Subsampling
    from wsidicomizer import WsiDicomizer

    source = m.rgb_pattern(128, 96)
    results = {}
    for colorspace in ("rgb", "ycbcr"):
        svs = m.write_aperio_j2k_svs(folder / f"mpp-{colorspace}.svs", colorspace=colorspace, mpp=0.5)
        out = folder / f"mpp-{colorspace}-out"
        with WsiDicomizer.open(svs, encoding=JpegSettings(quality=95, subsampling=Subsampling.R444)) as wsi:
            files = wsi.save(out, add_missing_levels=True, workers=1, include_labels=False,
                             include_overviews=False, include_thumbnails=False)
        base = max((pydicom.dcmread(f) for f in files), key=lambda d: d.TotalPixelMatrixColumns)
        first_frame = next(pydicom.encaps.generate_frames(base.PixelData, number_of_frames=base.NumberOfFrames))
        with WsiDicom.open([str(f) for f in files]) as stored:
            rgb = np.asarray(stored.read_region((0, 0), 0, (128, 96)).convert("RGB"))
        results[colorspace] = (base.file_meta.TransferSyntaxUID.name, base.PhotometricInterpretation,
                               first_frame[:2].hex(), psnr(rgb, source))
    # 33005: J2K code-streams copied into a file that declares JPEG Baseline.
    assert results["rgb"][:3] == ("JPEG Baseline (Process 1)", "YBR_ICT", "ff4f")
    # 33003: YCbCr samples decoded as if RGB and re-encoded: wrong colours.
    assert results["ycbcr"][2] == "ffd8" and results["ycbcr"][3] < 25
