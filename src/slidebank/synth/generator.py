"""Synthetic H&E/IHC-like whole-slide images with real vendor layouts and fake PHI.

Why procedural: tests need slides of any size (up to ~100k px a side) that real readers (OpenSlide,
opentile, wsidicomizer) accept, that look like tissue at every pyramid level, and whose tissue
location is known exactly (`tissue_mask`) so tissue detection can be scored.  Every pixel is an
analytic function of its global level-0 coordinate, the seed and the level, so any tile of any level
can be rendered on its own: tiles join seamlessly, memory stays bounded (one tile per worker plus the
TIFF writer's offset tables) and the work parallelises across threads.

This module puts the pieces together: the painter (`tissue`), tile streaming (`pyramid`), the fake
identity (`phi`) and the vendor layout (`layout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from slidebank.synth.layout import SlideLayout, SyntheticSlide, Vendor, check_slide_args, use_bigtiff, write_slide_file
from slidebank.synth.phi import default_label_text, make_phi
from slidebank.synth.pyramid import (
    JPEG_SUBSAMPLING,
    level_dimensions,
    level_tiles,
    render_overview,
    thumbnail_size,
    tune_allocator,
    worker_count,
)
from slidebank.synth.tissue import Painter, Stain


def _jpeg_bytes_per_pixel(quality: int) -> float:
    """Upper estimate of our tissue's JPEG rate (measured about 0.35 B/px at Q90), with margin."""
    return 0.25 + 0.9 * max(0, quality - 70) / 30


def write_synthetic_slide(
    path: Path,
    width: int,
    height: int,
    *,
    vendor: Vendor = "aperio",
    label_text: str | None = None,
    seed: int = 0,
    tile_size: int = 256,
    mpp: float = 0.25,
    objective_power: int = 40,
    jpeg_quality: int = 90,
    stain: Stain = "HE",
    bigtiff: bool | None = None,
    blurred: Sequence[tuple[int, int, int, int]] = (),
) -> SyntheticSlide:
    """Write a tissue-like pyramidal slide in bounded memory and return what was written.

    `blurred` level-0 rectangles (x, y, width, height) are written out of focus, to test focus QC.

    aperio: SVS page order baseline (tiled JPEG), thumbnail (stripped JPEG), reduced levels (tiled
    JPEG), label (stripped LZW, NewSubfileType 1), macro (stripped JPEG, NewSubfileType 9), each
    with an Aperio ImageDescription.  generic: one tiled JPEG page per power-of-two level with
    centimetre resolution tags.  Fake PHI goes into descriptions and label pixels; see `phi_strings`.
    """
    path = Path(path)
    check_slide_args(width, height, tile_size, vendor, mpp)
    if stain not in ("HE", "IHC"):
        raise ValueError(f"unknown stain {stain!r}")
    label = label_text if label_text is not None else default_label_text(seed)
    phi = make_phi(label, seed)
    tune_allocator()
    painter = Painter(width, height, seed, mpp, stain)
    dims = level_dimensions(width, height, tile_size)
    workers = worker_count()
    tw, th = thumbnail_size(width, height)
    layout = SlideLayout(
        path=path, vendor=vendor, width=width, height=height, tile_size=tile_size, mpp=mpp,
        objective_power=objective_power, quality=jpeg_quality,
        bigtiff=use_bigtiff(width, height, _jpeg_bytes_per_pixel(jpeg_quality), bigtiff),
        label_text=label, phi=phi, level_dims=dims,
        level_tiles=lambda level: level_tiles(painter, level, dims[level], tile_size, jpeg_quality, workers,
                                              blurred),
        thumbnail=lambda: render_overview(painter, width, height, tw, th),
        subsampling=JPEG_SUBSAMPLING,
    )
    return write_slide_file(layout)
