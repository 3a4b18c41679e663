"""Conversion to the canonical format: DICOM WSI, tiled, every power-of-two level.

wsidicomizer (with opentile underneath) copies JPEG tiles from SVS, NDPI, Philips and OME TIFFs
without re-encoding; formats it can only read through OpenSlide are re-encoded. DICOM input is
re-written by wsidicom, which copies its frames. Pyramids whose levels are not powers of two (some
generic TIFFs) are converted from level 0 alone and the lower levels are rebuilt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from wsidicom import WsiDicom
from wsidicom.codec import JpegSettings, Subsampling
from wsidicom.metadata import WsiMetadata
from wsidicomizer import WsiDicomizer
from wsidicomizer.extras.openslide.openslide_source import OpenSlideSource

from slidebank.ingest.deidentify import apply_confidentiality_profile
from slidebank.slides.inspect import SourceInfo
from slidebank.slides.source import SourceSlide

logger = logging.getLogger(__name__)

# Used only where pixels must be re-encoded (OpenSlide-read sources, missing levels). The default
# (quality 80, 4:2:2 chroma) loses ~8 dB on sharp edges; at 95 with full chroma the stored slide
# stays above the 40 dB fidelity target at roughly twice the size of the default.
REENCODE_SETTINGS = JpegSettings(quality=95, subsampling=Subsampling.R444)


class ConversionError(Exception):
    """The source passed validation but could not be turned into DICOM WSI."""


class BaseLevelOpenSlideSource(OpenSlideSource):
    """OpenSlide source that exposes only level 0, for pyramids with non power-of-two levels."""

    @property
    def pyramid_levels(self) -> dict[tuple[int, float, str], int]:
        return {(0, 0.0, "0"): 0}


@dataclass(frozen=True)
class ConversionResult:
    files: tuple[Path, ...]
    method: str  # how pixels got there: "tile-copy", "re-encoded", "dicom-rewrite", ...
    source_reader: str


def convert_to_dicom(
    source: SourceSlide,
    info: SourceInfo,
    metadata: WsiMetadata,
    output_dir: Path,
    *,
    threads: int = 1,
) -> ConversionResult:
    """Write the canonical DICOM WSI files of `source` into `output_dir` (a staging directory)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        if info.reader == "dicom":
            return _rewrite_dicom(source, metadata, output_dir, threads)
        return _dicomize(source, info, metadata, output_dir, threads)
    except ConversionError:
        raise
    except Exception as error:
        raise ConversionError(f"conversion to DICOM WSI failed ({type(error).__name__}: {error})") from error


def _dicomize(
    source: SourceSlide, info: SourceInfo, metadata: WsiMetadata, output_dir: Path, threads: int
) -> ConversionResult:
    preferred = None if info.power_of_two_levels else BaseLevelOpenSlideSource
    with WsiDicomizer.open(
        source.path,
        metadata=metadata,
        include_confidential=False,
        metadata_post_processor=apply_confidentiality_profile,
        preferred_source=preferred,
        encoding=REENCODE_SETTINGS,
    ) as wsi:
        reader = type(getattr(wsi, "_source", None)).__name__ if hasattr(wsi, "_source") else "wsidicomizer"
        files = wsi.save(
            output_dir,
            workers=threads,
            include_labels=False,
            include_overviews=False,
            include_thumbnails=False,
            add_missing_levels=True,
        )
    # Only opentile hands over compressed source tiles; every other source (OpenSlide, tiffslide)
    # decodes pixels and wsidicom re-encodes them. Missing lower levels are always re-encoded.
    method = "tile-copy" if reader == "OpenTileSource" else "re-encoded"
    return ConversionResult(tuple(Path(f) for f in files), method, reader)


def _rewrite_dicom(source: SourceSlide, metadata: WsiMetadata, output_dir: Path, threads: int) -> ConversionResult:
    with WsiDicom.open([str(f) for f in source.files]) as wsi:
        files = wsi.save(
            output_dir,
            workers=threads,
            include_labels=False,
            include_overviews=False,
            include_thumbnails=False,
            add_missing_levels=True,
            metadata=metadata,
            replace_metadata=True,
        )
    return ConversionResult(tuple(Path(f) for f in files), "dicom-rewrite", "wsidicom")
