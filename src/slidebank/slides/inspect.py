"""Identify and validate a source slide before anything is written.

Every refusal is a `SlideRejected` with a one-line reason and a hint for the submitter. The checks
are ordered cheapest first and never decode more than one tile per probe: declared dimensions are
checked before any pixel is read (decompression bombs), TIFF tile offsets are checked against the
file size (truncation), and then a few tiles of *every* level are really decoded (corruption).

Slidebank stores 8-bit brightfield slides, RGB or grey. Deeper images (16-bit grey, 16-bit RGB,
floating point) and multi-channel fluorescence (OME-TIFF channels, DICOM optical paths) are refused
from their headers alone, before any converter sees them: wsidicom 0.31 cannot encode the 16-bit
levels it generates and may then hang, and it loses optical paths when re-writing a multi-channel
series; a refusal that says why is better than a stalled batch or a slide missing its channels.

A missing pixel size is not a refusal: `SourceInfo.mpp_x/mpp_y` are then None, and the pipeline
uses the one the submitter supplied, or stores the slide with its pixel size marked unknown.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import openslide
import pydicom
import tifffile

from slidebank.slides.source import SourceSlide

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Aperio's private TIFF compression codes for JPEG 2000 tiles: YCbCr and RGB code-streams.
APERIO_J2K_YCBCR = 33003
APERIO_J2K_RGB = 33005
WHAT_WE_STORE = "Slidebank stores 8-bit brightfield slides (RGB or grey)"

# OpenSlide vendor name -> (original format label, scanner manufacturer)
VENDOR_FORMATS: dict[str, tuple[str, str | None]] = {
    "aperio": ("aperio-svs", "Leica Biosystems (Aperio)"),
    "hamamatsu": ("hamamatsu-ndpi", "Hamamatsu"),
    "mirax": ("3dhistech-mrxs", "3DHISTECH"),
    "philips": ("philips-tiff", "Philips"),
    "leica": ("leica-scn", "Leica Biosystems"),
    "ventana": ("ventana-bif", "Roche Ventana"),
    "generic-tiff": ("generic-tiff", None),
    "trestle": ("trestle-tiff", "Trestle"),
    "sakura": ("sakura-svslide", "Sakura"),
    "synthetic": ("synthetic", None),
}


class SlideRejected(Exception):
    """A source slide that must not enter the store, with what the submitter can do about it."""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.reason} — {self.hint}" if self.hint else self.reason


@dataclass(frozen=True)
class Limits:
    """Bounds that separate a real slide from a decompression bomb or a mistake."""

    max_side: int = 1_000_000
    max_pixels: int = 200_000 * 200_000


@dataclass(frozen=True)
class SourceInfo:
    """What validation learned about a source slide; everything here is safe to catalog."""

    reader: str  # "openslide" or "dicom"
    original_format: str
    vendor: str
    width: int
    height: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None
    scanner_manufacturer: str | None
    scanner_model: str | None
    associated_images: tuple[str, ...] = field(default_factory=tuple)
    tiff_compression: int | None = None  # TIFF Compression of the level-0 page (TIFF-based formats)

    @property
    def pixel_size_known(self) -> bool:
        return self.mpp_x is not None and self.mpp_y is not None

    @property
    def power_of_two_levels(self) -> bool:
        """Whether wsidicom can map every source level onto a power-of-two DICOM level."""
        for downsample in self.level_downsamples:
            exponent = math.log2(downsample) if downsample > 0 else -1
            if exponent < 0 or abs(exponent - round(exponent)) > 0.01:
                return False
        return True


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) and number > 0 else None


def _check_dimensions(width: int, height: int, limits: Limits) -> None:
    if width <= 0 or height <= 0:
        raise SlideRejected(f"declares an empty image ({width}×{height})", "the file is damaged; export it again")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise SlideRejected(
            f"declares absurd dimensions {width}×{height} (limit {limits.max_side} px per side, "
            f"{limits.max_pixels:,} px in all)",
            "this looks like a decompression bomb or a damaged header; it was not decoded",
        )


def _refuse_deep(bits: int, samples: int, floating: bool = False) -> None:
    kind = "grey" if samples == 1 else "colour"
    depth = f"{bits}-bit floating-point" if floating else f"{bits}-bit"
    raise SlideRejected(
        f"{depth} {kind} image: {WHAT_WE_STORE}",
        "export an 8-bit rendering, or keep the original in a fluorescence archive",
    )


def _refuse_channels(count: int, names: list[str], bits: int) -> None:
    listed = f": {', '.join(names[:8])}{', …' if len(names) > 8 else ''}" if names else ""
    raise SlideRejected(
        f"multi-channel fluorescence image ({count} channels{listed}; {bits}-bit): {WHAT_WE_STORE}",
        "keep the original in a fluorescence archive (e.g. OMERO), or export an 8-bit RGB rendering",
    )


def _ome_channel_names(tif: tifffile.TiffFile) -> list[str]:
    try:
        root = ElementTree.fromstring(tif.ome_metadata or "")
    except ElementTree.ParseError:
        return []
    image = root.find("{*}Image")
    channels = (image if image is not None else root).findall(".//{*}Channel")
    return [str(c.get("Name") or c.get("ID") or "?") for c in channels]


def _check_tiff_modality(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> None:
    """Refuse multi-channel and deeper-than-8-bit TIFFs from the first page and the series axes."""
    samples, bits = int(page.samplesperpixel), int(page.bitspersample)
    channels = samples if samples not in (1, 3, 4) else 1  # 3/4: RGB(A); 2 or 5+: channels
    names: list[str] = []
    if tif.is_ome:
        names = _ome_channel_names(tif)
        series = tif.series[0] if tif.series else None
        if series is not None and "C" in series.axes:
            channels = max(channels, int(series.shape[series.axes.index("C")]))
        channels = max(channels, len(names))
    if channels > 1:
        _refuse_channels(channels, names, bits)
    if bits > 8 or int(page.sampleformat) == 3:
        _refuse_deep(bits, samples, floating=int(page.sampleformat) == 3)


def _check_dicom_modality(files: tuple[Path, ...]) -> None:
    """Refuse 16-bit and multi-optical-path DICOM from the headers, before wsidicom opens them."""
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=[
                "ImageType", "BitsAllocated", "SamplesPerPixel", "NumberOfOpticalPaths", "OpticalPathSequence"])
        except Exception:  # noqa: BLE001 - wsidicom reports unreadable files with a better reason
            continue
        image_type = [str(v) for v in header.get("ImageType", [])]
        if len(image_type) > 2 and image_type[2] in ("LABEL", "OVERVIEW"):
            continue  # dropped anyway
        paths = header.get("OpticalPathSequence") or []
        count = max(int(header.get("NumberOfOpticalPaths", 1) or 1), len(paths))
        bits = int(header.get("BitsAllocated", 8) or 8)
        if count > 1:
            names = [str(p.get("OpticalPathDescription") or p.get("OpticalPathIdentifier") or "?") for p in paths]
            _refuse_channels(count, [n.split(" (")[0] for n in names], bits)
        if bits > 8:
            _refuse_deep(bits, int(header.get("SamplesPerPixel", 1) or 1))


def _check_tiff_structure(path: Path, limits: Limits) -> int | None:
    """Refuse strip TIFFs, bombs, truncated TIFFs and other modalities using only the file's directory.

    Returns the level-0 page's compression (the converter chooses a reader by it)."""
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            pages = [cast(tifffile.TiffPage, page) for page in tif.pages]  # pages, not frames: useframes is off
            if not pages:
                raise SlideRejected("TIFF has no images", "the file is damaged; export it again")
            for index, page in enumerate(pages):
                _check_dimensions(int(page.imagewidth), int(page.imagelength), limits)
                for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
                    if count and offset + count > size:
                        raise SlideRejected(
                            f"truncated: image {index} needs bytes up to {offset + count:,} "
                            f"but the file has {size:,}",
                            "the copy is incomplete; transfer the file again",
                        )
            _check_tiff_modality(tif, pages[0])
            if not pages[0].is_tiled:
                raise SlideRejected(
                    "plain (strip-organised) TIFF, not a tiled whole-slide pyramid",
                    "export the slide from the scanner software, or convert it to a tiled pyramidal "
                    "TIFF (e.g. `vips tiffsave in.tif out.tif --tile --pyramid`)",
                )
            return int(pages[0].compression)
    except SlideRejected:
        raise
    except Exception as error:  # tifffile raises many types on hostile input
        raise SlideRejected(f"unreadable TIFF structure ({error})", "the file is damaged; export it again") from error


def _probe_tiles(
    read: Callable[[int, int, int, int, int, float], None],
    level_dims: tuple[tuple[int, int], ...],
    tile: int,
    downsamples: tuple[float, ...],
) -> None:
    """Decode the first, middle and last tile of every level; a damaged pyramid fails here."""
    for level, (width, height) in enumerate(level_dims):
        w, h = min(tile, width), min(tile, height)
        spots = {(0, 0), ((width - w) // 2, (height - h) // 2), (width - w, height - h)}
        for x, y in sorted(spots):
            try:
                read(level, x, y, w, h, downsamples[level])
            except Exception as error:
                raise SlideRejected(
                    f"corrupt or truncated: decoding level {level} at ({x}, {y}) failed ({error})",
                    "the file is damaged or incomplete; transfer or export it again",
                ) from error


def _inspect_openslide(
    source: SourceSlide, vendor: str, limits: Limits, tiff_compression: int | None = None
) -> SourceInfo:
    try:
        slide = openslide.OpenSlide(source.path)
    except Exception as error:
        raise SlideRejected(
            f"{vendor} slide could not be opened ({error})", "the file is damaged; export it again"
        ) from error
    with slide:
        width, height = slide.dimensions
        _check_dimensions(width, height, limits)
        properties = slide.properties
        level_dims = tuple((int(w), int(h)) for w, h in slide.level_dimensions)
        downsamples = tuple(float(d) for d in slide.level_downsamples)

        def read(level: int, x: int, y: int, w: int, h: int, downsample: float) -> None:
            slide.read_region((int(x * downsample), int(y * downsample)), level, (w, h))

        _probe_tiles(read, level_dims, 256, downsamples)
        original_format, manufacturer = VENDOR_FORMATS.get(vendor, (vendor, None))
        model = (
            properties.get("hamamatsu.Product")
            or properties.get("philips.DICOM_MANUFACTURERS_MODEL_NAME")
            or properties.get("leica.device-model")
        )
        return SourceInfo(
            reader="openslide",
            original_format=original_format,
            vendor=vendor,
            width=width,
            height=height,
            level_dimensions=level_dims,
            level_downsamples=downsamples,
            mpp_x=_float(properties.get(openslide.PROPERTY_NAME_MPP_X)),
            mpp_y=_float(properties.get(openslide.PROPERTY_NAME_MPP_Y)),
            objective_power=_float(properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
            scanner_manufacturer=manufacturer,
            scanner_model=model,
            associated_images=tuple(sorted(slide.associated_images.keys())),
            tiff_compression=tiff_compression,
        )


def _inspect_dicom(source: SourceSlide, limits: Limits) -> SourceInfo:
    from wsidicom import WsiDicom

    _check_dicom_modality(source.files)
    try:
        wsi = WsiDicom.open([str(f) for f in source.files])
    except Exception as error:
        raise SlideRejected(
            f"DICOM files do not form a readable WSI pyramid ({error})",
            "send every instance of the series (all levels) together",
        ) from error
    with wsi:
        levels = list(wsi.levels)
        base = levels[0]
        _check_dimensions(base.size.width, base.size.height, limits)
        level_dims = tuple((lvl.size.width, lvl.size.height) for lvl in levels)
        downsamples = tuple(base.size.width / lvl.size.width for lvl in levels)

        def read(level: int, x: int, y: int, w: int, h: int, downsample: float) -> None:
            wsi.read_region((x, y), levels[level].level, (w, h))

        _probe_tiles(read, level_dims, max(wsi.tile_size.width, 1), downsamples)
        spacing = base.pixel_spacing
        dataset = levels[0].datasets[0]
        associated = tuple(
            name for name, present in (("label", wsi.labels), ("macro", wsi.overviews)) if present
        )
        return SourceInfo(
            reader="dicom",
            original_format="dicom-wsi",
            vendor="dicom",
            width=base.size.width,
            height=base.size.height,
            level_dimensions=level_dims,
            level_downsamples=downsamples,
            mpp_x=spacing.width * 1000 if spacing else None,
            mpp_y=spacing.height * 1000 if spacing else None,
            objective_power=(
                _float(str(dataset.get("ObjectiveLensPower", "") or "")) if hasattr(dataset, "get") else None
            ),
            scanner_manufacturer=str(dataset.get("Manufacturer", "") or "") or None,
            scanner_model=str(dataset.get("ManufacturerModelName", "") or "") or None,
            associated_images=associated,
        )


def inspect_source(source: SourceSlide, limits: Limits | None = None) -> SourceInfo:
    """Identify the format and prove the slide is a complete, sane pyramid; raise SlideRejected if not."""
    limits = limits or Limits()
    for file in source.files:
        if not file.is_file():
            raise SlideRejected(f"{file} is missing", "send every file of the slide")
    if source.path.stat().st_size == 0:
        raise SlideRejected("empty file (0 bytes)", "the transfer failed; send the file again")
    if source.kind == "dicom":
        return _inspect_dicom(source, limits)

    with open(source.path, "rb") as handle:
        magic = handle.read(4)
    compression = _check_tiff_structure(source.path, limits) if magic in TIFF_MAGICS else None
    try:
        vendor = openslide.OpenSlide.detect_format(str(source.path))
    except Exception:  # noqa: BLE001 - a file OpenSlide cannot even probe is simply not one of its formats
        vendor = None
    if vendor is None:
        if magic in TIFF_MAGICS:
            raise SlideRejected(
                "tiled TIFF that no whole-slide reader recognises",
                "export it as a pyramidal TIFF, SVS or DICOM WSI",
            )
        raise SlideRejected(
            f"unsupported format ({source.path.suffix or 'no extension'}): not a whole-slide image "
            "that OpenSlide, wsidicom or tifffile can read",
            "supported: SVS, NDPI, MRXS, Philips TIFF, SCN, BIF, OME/generic tiled TIFF, DICOM WSI",
        )
    if vendor == "dicom":  # OpenSlide recognises DICOM too; wsidicom reads it better.
        return _inspect_dicom(SourceSlide(source.path, source.files, "dicom"), limits)
    return _inspect_openslide(source, vendor, limits, compression)


def pixel_size_hint(info: SourceInfo) -> str:
    """What a submitter can do about a slide whose file does not say how large a pixel is."""
    supply = "give the µm/px with `ingest --mpp` or an `mpp` column in the sidecar"
    if info.vendor == "aperio":  # OpenSlide's Aperio driver reads only 'MPP =', never TIFF resolution tags
        return f"the Aperio description has no 'MPP =' field: {supply}, or re-export it from the scanner software"
    if info.vendor == "generic-tiff":
        return f"{supply}, or write the TIFF resolution tags (ResolutionUnit centimetre) when exporting"
    return f"{supply}, or re-export it from the scanner software"
