"""Conversion to the canonical format: DICOM WSI, tiled, every power-of-two level.

wsidicomizer (with opentile underneath) copies compressed tiles from SVS, NDPI, Philips and OME
TIFFs without re-encoding; formats it can only read through OpenSlide are re-encoded. DICOM input is
re-written by wsidicom, which copies its frames. Pyramids whose levels are not powers of two (some
generic TIFFs) are converted from level 0 alone and the lower levels are rebuilt.

Three things wsidicom 0.31 / opentile 0.22 get wrong are handled here (see the modalities report):
- generated levels get short edge frames (e.g. 16×8 where Rows×Columns is 16×16), which OpenSlide
  and pydicom cannot read: every encoder is wrapped in `FullFrameEncoder`, which pads them;
- Aperio JPEG 2000 tiles: opentile copies 33005 (RGB) code-streams but wsidicom labels the files
  with the transfer syntax of the encoder it was given, so for those the encoder *is* JPEG 2000;
  opentile decodes 33003 (YCbCr) tiles as if they were RGB (wrong colours), so those slides are
  read through OpenSlide, which decodes them right, and re-encoded;
- opentile refuses an SVS without `MPP =` (KeyError 'MPP'): slides whose file gives no pixel size
  are read through OpenSlide, with the spacing Slidebank puts in the metadata.
Whatever the path, `check_frames_match_transfer_syntax` reads back the first frame of every file.
"""

from __future__ import annotations

import logging
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import JPEG2000, UID, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless
from wsidicom import WsiDicom
from wsidicom.codec import Channels, Encoder, Jpeg2kSettings, JpegLsSettings, JpegSettings, Settings, Subsampling
from wsidicom.metadata import WsiMetadata
from wsidicomizer import WsiDicomizer
from wsidicomizer.extras.openslide.openslide_source import OpenSlideSource

from slidebank.ingest.deidentify import apply_confidentiality_profile
from slidebank.slides.inspect import APERIO_J2K_RGB, APERIO_J2K_YCBCR, SourceInfo
from slidebank.slides.source import SourceSlide

logger = logging.getLogger(__name__)

# Used only where pixels must be re-encoded (OpenSlide-read sources, missing levels). The default
# (quality 80, 4:2:2 chroma) loses ~8 dB on sharp edges; at 95 with full chroma the stored slide
# stays above the 40 dB fidelity target at roughly twice the size of the default.
REENCODE_SETTINGS = JpegSettings(quality=95, subsampling=Subsampling.R444)
# Copied Aperio 33005 tiles are JPEG 2000 code-streams: the levels wsidicom adds must be too (one
# transfer syntax per file set); 80 dB is visually lossless at a fraction of the lossless size.
APERIO_J2K_SETTINGS = Jpeg2kSettings(levels=80, bits=8, channels=Channels.YBR)

# How a frame may begin in a file that declares each transfer syntax (a JPEG 2000 code-stream, or
# the JP2 file some scanners' DICOM carries instead and readers accept).
_J2K_STARTS = (b"\xff\x4f", b"\x00\x00\x00\x0cjP  ")
_FRAME_STARTS: dict[UID, tuple[bytes, ...]] = {
    JPEGBaseline8Bit: (b"\xff\xd8",),
    JPEGLSLossless: (b"\xff\xd8",),
    JPEG2000: _J2K_STARTS,
    JPEG2000Lossless: _J2K_STARTS,
}


class ConversionError(Exception):
    """The source passed validation but could not be turned into DICOM WSI."""


class _NotAboutGivenSpacing(logging.Filter):
    """wsidicomizer warns on the root logger, with an empty traceback, that it "could not determine
    pixel spacing" whenever the file has none, even when Slidebank's metadata supplies it: a line a
    submitter would read as a failure. The pixel size is reported by ingest itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Could not determine pixel spacing")


class BaseLevelOpenSlideSource(OpenSlideSource):
    """OpenSlide source that exposes only level 0, for pyramids with non power-of-two levels."""

    @property
    def pyramid_levels(self) -> dict[tuple[int, float, str], int]:
        return {(0, 0.0, "0"): 0}


class FullFrameEncoder(Encoder[Settings]):
    """An encoder whose every frame is a whole tile: edge tiles are padded before encoding.

    Why: wsidicom 0.31 reduces the edge blocks of the levels it generates at their own size, so
    their frames come out short (16×8 in a 16×16 file). wsidicom tolerates that when reading, but
    OpenSlide ("Dimensional mismatch reading JPEG") and pydicom (uncompressed pixel data of the
    wrong length) do not, and DICOM says every frame is Rows×Columns. Padding is with the colour of
    empty glass (white), which compresses well and looks right in viewers that show whole frames;
    readers that follow DICOM crop to the total pixel matrix.

    The tile size is only known once the source is opened, so it is set then (`tile`).
    """

    def __init__(self, inner: Encoder, tile: tuple[int, int] | None = None) -> None:
        super().__init__(inner.settings)
        self._inner = inner
        self.tile = tile

    def encode(self, image: Image.Image | np.ndarray) -> bytes:
        if self.tile is not None:
            width, height = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
            if (width, height) != self.tile:
                array = np.asarray(image)
                fill = np.iinfo(array.dtype).max if array.dtype.kind in "ui" else 1.0
                padded = np.full((self.tile[1], self.tile[0], *array.shape[2:]), fill, dtype=array.dtype)
                padded[: min(height, self.tile[1]), : min(width, self.tile[0])] = array[: self.tile[1], : self.tile[0]]
                image = padded
        return self._inner.encode(image)

    @property
    def lossy(self) -> bool:
        return self._inner.lossy

    @classmethod
    def supports_settings(cls, settings: Settings) -> bool:
        return True

    @classmethod
    def is_available(cls) -> bool:
        return True


@dataclass(frozen=True)
class ConversionResult:
    files: tuple[Path, ...]
    # How level-0 pixels got there: "tile-copy" (the source's compressed tiles, byte for byte),
    # "re-encoded" (decoded, then lossy JPEG), "dicom-rewrite" (DICOM frames copied) or
    # "lossless-transcode" (DICOM frames decoded and stored losslessly in another codec).
    method: str
    source_reader: str


def convert_to_dicom(
    source: SourceSlide,
    info: SourceInfo,
    metadata: WsiMetadata,
    output_dir: Path,
    *,
    threads: int = 1,
    scratch: Path | None = None,
) -> ConversionResult:
    """Write the canonical DICOM WSI files of `source` into `output_dir` (a staging directory).

    `metadata` must carry the pixel spacing to store (the file's, a supplied one, or a nominal one
    where nobody knows it): sources without one in the file are read through OpenSlide with it.
    `scratch` is where the converter's temporary files go (default: the system's temporary folder).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _temporary_files_in(scratch):
            return _convert(source, info, metadata, output_dir, threads)
    except ConversionError:
        raise
    except Exception as error:
        raise ConversionError(f"conversion to DICOM WSI failed ({type(error).__name__}: {error})") from error


@contextmanager
def _temporary_files_in(folder: Path | None) -> Iterator[None]:
    """Point `tempfile` at `folder` while converting.

    Why: wsidicom's pyramid writer caches decoded tiles in a folder of its own under the system's
    temporary directory and removes it when done; a worker killed for hanging never gets there, and
    slide pixels would stay in /tmp. Under the ingest's staging folder they go with it at recovery.
    Conversions run one at a time per worker process, so changing the process-wide default is safe.
    """
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


def _convert(
    source: SourceSlide, info: SourceInfo, metadata: WsiMetadata, output_dir: Path, threads: int
) -> ConversionResult:
    if info.reader == "dicom":
        result = _rewrite_dicom(source, metadata, output_dir, threads)
    else:
        result = _dicomize(source, info, metadata, output_dir, threads)
    check_frames_match_transfer_syntax(result.files)
    return result


def _dicomize(
    source: SourceSlide, info: SourceInfo, metadata: WsiMetadata, output_dir: Path, threads: int
) -> ConversionResult:
    preferred: type[OpenSlideSource] | None = None
    settings: Settings = REENCODE_SETTINGS
    if not info.power_of_two_levels:
        preferred = BaseLevelOpenSlideSource
    elif not info.pixel_size_known or info.tiff_compression == APERIO_J2K_YCBCR:
        preferred = OpenSlideSource  # opentile refuses a missing MPP and mis-colours 33003 tiles
    elif info.tiff_compression == APERIO_J2K_RGB:
        settings = APERIO_J2K_SETTINGS  # the copied tiles are J2K: so must the label and new levels be
    encoder = FullFrameEncoder(Encoder.create_for_settings(settings))
    quiet = _NotAboutGivenSpacing()
    logging.getLogger().addFilter(quiet)
    try:
        opened = WsiDicomizer.open(
            source.path,
            metadata=metadata,
            include_confidential=False,
            metadata_post_processor=apply_confidentiality_profile,
            preferred_source=preferred,
            encoding=encoder,
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    with opened as wsi:
        encoder.tile = (wsi.tile_size.width, wsi.tile_size.height)
        reader = type(getattr(wsi, "_source", None)).__name__ if hasattr(wsi, "_source") else "wsidicomizer"
        # wsidicom's own rule (FileWriter._resolve_transcoding): tiles are copied exactly when the
        # source needs no transcoder; OpenSlide and tiffslide sources always do.
        copied = _base_image_data(wsi).transcoder is None
        files = wsi.save(
            output_dir,
            workers=threads,
            include_labels=False,
            include_overviews=False,
            include_thumbnails=False,
            add_missing_levels=True,
        )
    return ConversionResult(tuple(Path(f) for f in files), "tile-copy" if copied else "re-encoded", reader)


def _rewrite_dicom(source: SourceSlide, metadata: WsiMetadata, output_dir: Path, threads: int) -> ConversionResult:
    """Copy the frames of a DICOM WSI under Slidebank's metadata; add missing levels, full-size frames.

    Uncompressed sources are stored as lossless JPEG-LS instead: the same pixels in a fraction of the
    bytes, and wsidicom 0.31 decodes uncompressed frames through one shared dataset per file, which
    hands out another tile now and then when threads read concurrently (tile serving, workers > 1).
    """
    with WsiDicom.open([str(f) for f in source.files]) as wsi:
        image_data = _base_image_data(wsi)
        transcoding: Encoder | None = None
        if not image_data.transfer_syntax.is_compressed:
            channels = Channels.GRAYSCALE if image_data.samples_per_pixel == 1 else Channels.RGB
            transcoding = FullFrameEncoder(
                Encoder.create_for_settings(JpegLsSettings(level=0, bits=image_data.bits, channels=channels)),
                (wsi.tile_size.width, wsi.tile_size.height),
            )
            threads = 1  # reading uncompressed frames is not thread-safe in wsidicom 0.31
        else:
            # Frames are copied with the source's encoder as the declared one; levels wsidicom adds
            # are encoded with it too, so it is the one that must pad. wsidicom has no option for
            # this: the encoder is swapped on the base level's image data (checked by the tests).
            for instance in wsi.pyramid.base_level.instances.values():
                data = instance.image_data
                if not isinstance(data.encoder, FullFrameEncoder):
                    data._encoder = FullFrameEncoder(data.encoder, (wsi.tile_size.width, wsi.tile_size.height))
        files = wsi.save(
            output_dir,
            workers=threads,
            include_labels=False,
            include_overviews=False,
            include_thumbnails=False,
            add_missing_levels=True,
            transcoding=transcoding,
            metadata=metadata,
            replace_metadata=True,
        )
    method = "dicom-rewrite" if transcoding is None else "lossless-transcode"
    return ConversionResult(tuple(Path(f) for f in files), method, "wsidicom")


def _base_image_data(wsi: WsiDicom):  # noqa: ANN202 - wsidicom's ImageData
    return next(iter(wsi.pyramid.base_level.instances.values())).image_data


def check_frames_match_transfer_syntax(files: tuple[Path, ...]) -> None:
    """Refuse output whose frames are not in the codec its files declare (the 33005 mislabelling).

    Reads each file's header and the first bytes of its first frame only: a cheap proof that a
    reader following the transfer syntax (OpenSlide, a PACS) decodes what was stored.
    """
    for path in files:
        with open(path, "rb") as handle:
            dataset = pydicom.dcmread(handle, stop_before_pixels=True)
            syntax = UID(dataset.file_meta.TransferSyntaxUID)
            starts = _FRAME_STARTS.get(syntax)
            if starts is None:
                continue
            first = _first_fragment_start(handle, max(len(start) for start in starts))
        if not first.startswith(starts):
            raise ConversionError(
                f"the converter wrote frames that are not {syntax.name} into a file that declares "
                f"{syntax.name} (first bytes {first.hex() or 'missing'})"
            )


def _first_fragment_start(handle: BinaryIO, count: int) -> bytes:
    """The first `count` bytes of the first fragment of encapsulated pixel data (explicit VR LE)."""
    header = handle.read(12)  # (7FE0,0010), "OB", reserved, undefined length
    if header[:4] != b"\xe0\x7f\x10\x00":
        return b""
    offset_table = handle.read(8)  # (FFFE,E000) and the length of the basic offset table
    if offset_table[:4] != b"\xfe\xff\x00\xe0":
        return b""
    handle.seek(struct.unpack("<I", offset_table[4:8])[0], 1)
    item = handle.read(8)
    return handle.read(count) if item[:4] == b"\xfe\xff\x00\xe0" else b""
