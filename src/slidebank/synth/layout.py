"""Vendor file layouts: the pages, tags and descriptions of an Aperio SVS or a generic pyramidal TIFF.

A layout takes its tile bytes from a callable, so painted tiles (`generator`) and one repeated
precompressed tile (`large`) are written by the same code; the fake PHI goes into the descriptions
and the label and macro pages.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import tifffile

from slidebank.synth.phi import Phi, render_label, render_macro

Vendor = Literal["aperio", "generic"]

APERIO_LIBRARY = "Aperio Image Library v12.0.15"


@dataclass(frozen=True)
class SyntheticSlide:
    """What the generator wrote, so tests can check readers and de-identification against it."""

    path: Path
    width: int
    height: int
    vendor: str
    mpp: float
    level_dimensions: tuple[tuple[int, int], ...]
    label_text: str
    phi_strings: tuple[str, ...]


def _aperio_metadata(phi: Phi, mpp: float, objective_power: int, width: int, height: int) -> str:
    """The key=value tail Aperio repeats in every image of an SVS; carries the fake PHI."""
    image_id = 100000 + sum(phi.mrn.encode()) * 997 % 900000
    return (
        f"|AppMag = {objective_power}|MPP = {mpp!r}|Filename = {phi.filename}|Date = {phi.date}"
        f"|Time = {phi.time}|User = {phi.operator}|ScanScope ID = SS1234|Barcode = {phi.accession}"
        f"|Title = {phi.patient_name}|Patient ID = {phi.mrn}|StripeWidth = 2032|Time Zone = GMT+01:00"
        f"|Left = 25.691574|Top = 23.449873|LineCameraSkew = -0.000424|LineAreaXOffset = 0.019265"
        f"|LineAreaYOffset = -0.000313|Focus Offset = 0.000000|ImageID = {image_id}"
        f"|OriginalWidth = {width}|OriginalHeight = {height}|ICC Profile = ScanScope v1"
    )


def _generic_description(phi: Phi, label_text: str) -> str:
    return (
        f"Patient: {phi.patient_name} MRN {phi.mrn} Accession {phi.accession} File {phi.filename} "
        f"scanned by {phi.operator} on {phi.date} {phi.time}; label: {label_text}; "
        "slidebank synthetic pyramidal TIFF"
    )


def _description(text: str) -> str | bytes:
    """tifffile wants 7-bit ASCII strings; pass anything else through as UTF-8 bytes."""
    return text if text.isascii() else text.encode("utf-8")


def use_bigtiff(width: int, height: int, bytes_per_pixel: float, bigtiff: bool | None) -> bool:
    """Classic TIFF offsets end at 4 GiB; switch early (3.5 GB) using a pessimistic size estimate."""
    if bigtiff is not None:
        return bigtiff
    estimate = width * height * bytes_per_pixel * 4 / 3 + 8_000_000
    return estimate > 3.5e9


class _JpegTileArgs(TypedDict):
    """The `TiffWriter.write` arguments of a tiled JPEG page (typed, so `**` passes mypy)."""

    photometric: str
    compression: str
    subsampling: tuple[int, int]
    compressionargs: dict[str, Any]


@dataclass
class SlideLayout:
    """Everything `write_slide_file` needs, independent of where the tile bytes come from."""

    path: Path
    vendor: Vendor
    width: int
    height: int
    tile_size: int
    mpp: float
    objective_power: int
    quality: int
    bigtiff: bool
    label_text: str
    phi: Phi
    level_dims: tuple[tuple[int, int], ...]
    level_tiles: Callable[[int], Iterator[bytes]]
    thumbnail: Callable[[], np.ndarray]
    # tifffile arguments that make the tags match the JPEG tile bytes we hand it
    subsampling: tuple[int, int]
    rgb_jpeg: bool = False

    def tile_kwargs(self) -> _JpegTileArgs:
        args: dict[str, Any] = {"level": self.quality}
        if self.rgb_jpeg:
            args["outcolorspace"] = "RGB"
        return {"photometric": "rgb", "compression": "jpeg", "subsampling": self.subsampling, "compressionargs": args}


def write_slide_file(layout: SlideLayout) -> SyntheticSlide:
    """Write to a temporary name and rename, so a crash never leaves a truncated slide behind."""
    tmp = layout.path.with_name(layout.path.name + ".partial")
    try:
        _write_pages(layout, tmp)
        os.replace(tmp, layout.path)
    finally:
        tmp.unlink(missing_ok=True)
    return SyntheticSlide(
        layout.path, layout.width, layout.height, layout.vendor, layout.mpp, layout.level_dims, layout.label_text,
        layout.phi.strings(layout.label_text),
    )


def _write_pages(lay: SlideLayout, target: Path) -> None:
    """The vendor page layout (see `write_synthetic_slide`)."""
    w, h, ts = lay.width, lay.height, lay.tile_size
    with tifffile.TiffWriter(target, bigtiff=lay.bigtiff) as tif:
        if lay.vendor == "aperio":
            meta = _aperio_metadata(lay.phi, lay.mpp, lay.objective_power, w, h)
            tif.write(
                lay.level_tiles(0), shape=(h, w, 3), dtype=np.uint8, tile=(ts, ts), **lay.tile_kwargs(),
                metadata=None, software=False,
                description=_description(f"{APERIO_LIBRARY} \r\n{w}x{h} ({ts}x{ts}) JPEG/RGB Q={lay.quality}{meta}"),
            )
            thumb = lay.thumbnail()
            th, tw = thumb.shape[:2]
            tif.write(
                thumb, photometric="rgb", compression="jpeg", compressionargs={"level": 85},
                subsampling=(1, 1), rowsperstrip=th, metadata=None, software=False,
                description=_description(f"{APERIO_LIBRARY} \r\n{w}x{h} -> {tw}x{th} - {meta}"),
            )
            for level in range(1, len(lay.level_dims)):
                lw, lh = lay.level_dims[level]
                tif.write(
                    lay.level_tiles(level), shape=(lh, lw, 3), dtype=np.uint8, tile=(ts, ts), **lay.tile_kwargs(),
                    metadata=None, software=False,
                    description=_description(
                        f"{APERIO_LIBRARY} \r\n{w}x{h} ({ts}x{ts}) -> {lw}x{lh} JPEG/RGB Q={lay.quality}{meta}"
                    ),
                )
            label = render_label(lay.label_text, lay.phi.accession)
            lh_, lw_ = label.shape[:2]
            tif.write(
                label, photometric="rgb", compression="lzw", rowsperstrip=lh_, subfiletype=1,
                metadata=None, software=False,
                description=_description(f"{APERIO_LIBRARY}\r\nlabel {lw_}x{lh_} -> {lay.label_text}"),
            )
            macro = render_macro(thumb, label)
            mh, mw = macro.shape[:2]
            tif.write(
                macro, photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                subsampling=(1, 1), rowsperstrip=mh, subfiletype=9, metadata=None, software=False,
                description=_description(f"{APERIO_LIBRARY}\r\nmacro {mw}x{mh}"),
            )
        else:
            res = 10_000.0 / lay.mpp
            for level, (lw, lh) in enumerate(lay.level_dims):
                scale = float(1 << level)
                tif.write(
                    lay.level_tiles(level), shape=(lh, lw, 3), dtype=np.uint8, tile=(ts, ts), **lay.tile_kwargs(),
                    metadata=None, software=False,
                    subfiletype=0 if level == 0 else 1,
                    resolution=(res / scale, res / scale), resolutionunit="CENTIMETER",
                    description=_description(_generic_description(lay.phi, lay.label_text)) if level == 0 else None,
                )


def check_slide_args(width: int, height: int, tile_size: int, vendor: str, mpp: float) -> None:
    """Refuse arguments no layout can be written for, before any pixel is painted."""
    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    if tile_size < 16 or tile_size % 16:
        raise ValueError("tile_size must be a positive multiple of 16 (JPEG 4:2:0 MCUs)")
    if vendor not in ("aperio", "generic"):
        raise ValueError(f"unknown vendor {vendor!r}")
    if not mpp > 0:
        raise ValueError("mpp must be positive")
