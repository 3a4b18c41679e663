"""Identify and validate a source slide before anything is written.

Every refusal is a `SlideRejected` with a one-line reason and a hint for the submitter. The checks
are ordered cheapest first and never decode more than one tile per probe: declared dimensions are
checked before any pixel is read (decompression bombs), TIFF tile offsets are checked against the
file size (truncation), and then a few tiles of *every* level are really decoded (corruption).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import openslide
import tifffile

from slidebank.slides.source import SourceSlide

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

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


def _check_tiff_structure(path: Path, limits: Limits) -> None:
    """Refuse strip TIFFs, bombs and truncated TIFFs using only the file's directory."""
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            if not pages:
                raise SlideRejected("TIFF has no images", "the file is damaged; export it again")
            for index, page in enumerate(pages):
                _check_dimensions(int(page.imagewidth), int(page.imagelength), limits)
                for offset, count in zip(page.dataoffsets, page.databytecounts):
                    if count and offset + count > size:
                        raise SlideRejected(
                            f"truncated: image {index} needs bytes up to {offset + count:,} "
                            f"but the file has {size:,}",
                            "the copy is incomplete; transfer the file again",
                        )
            if not pages[0].is_tiled:
                raise SlideRejected(
                    "plain (strip-organised) TIFF, not a tiled whole-slide pyramid",
                    "export the slide from the scanner software, or convert it to a tiled pyramidal "
                    "TIFF (e.g. `vips tiffsave in.tif out.tif --tile --pyramid`)",
                )
    except SlideRejected:
        raise
    except Exception as error:  # tifffile raises many types on hostile input
        raise SlideRejected(f"unreadable TIFF structure ({error})", "the file is damaged; export it again") from error


def _probe_tiles(read, level_dims: tuple[tuple[int, int], ...], tile: int, downsamples: tuple[float, ...]) -> None:
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


def _inspect_openslide(source: SourceSlide, vendor: str, limits: Limits) -> SourceInfo:
    try:
        slide = openslide.OpenSlide(source.path)
    except Exception as error:
        raise SlideRejected(f"{vendor} slide could not be opened ({error})", "the file is damaged; export it again") from error
    with slide:
        width, height = slide.dimensions
        _check_dimensions(width, height, limits)
        properties = slide.properties
        level_dims = tuple(tuple(int(v) for v in dims) for dims in slide.level_dimensions)
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
        )


def _inspect_dicom(source: SourceSlide, limits: Limits) -> SourceInfo:
    from wsidicom import WsiDicom

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
            objective_power=_float(str(dataset.get("ObjectiveLensPower", "") or "")) if hasattr(dataset, "get") else None,
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
    if magic in TIFF_MAGICS:
        _check_tiff_structure(source.path, limits)
    try:
        vendor = openslide.OpenSlide.detect_format(str(source.path))
    except Exception:
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
    info = _inspect_openslide(source, vendor, limits)
    if info.mpp_x is None or info.mpp_y is None:
        # DICOM WSI requires a pixel spacing, and research on a slide without one cannot measure anything.
        raise SlideRejected(
            "the file does not say how large a pixel is (no µm/px, no TIFF resolution)",
            "export it from the scanner software, or set the TIFF resolution tags (e.g. ResolutionUnit=cm)",
        )
    return info
