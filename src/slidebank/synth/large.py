"""Large slides at disk speed: one precompressed JPEG tile repeated on every level of a vendor layout.

For large-file tests (BigTIFF, > 4 GiB ingest), where painting every tile would take too long.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

from slidebank.synth.layout import SlideLayout, SyntheticSlide, Vendor, check_slide_args, write_slide_file
from slidebank.synth.phi import default_label_text, make_phi
from slidebank.synth.pyramid import level_dimensions, thumbnail_size
from slidebank.synth.tissue import Painter, pixel_centres


def _jpeg_frame_info(data: bytes) -> tuple[int, int, int, tuple[int, int], bool]:
    """(width, height, components, chroma subsampling, is_rgb) from a baseline JPEG's headers."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("tile_jpeg is not a JPEG stream")
    pos = 2
    adobe_transform: int | None = None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("malformed JPEG marker sequence")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            adobe_transform = body[11]
        if marker in (0xC0, 0xC1):
            height = int.from_bytes(body[1:3], "big")
            width = int.from_bytes(body[3:5], "big")
            comps = body[5]
            ids = [body[6 + 3 * i] for i in range(comps)]
            samp = [body[7 + 3 * i] for i in range(comps)]
            h0, v0 = samp[0] >> 4, samp[0] & 15
            rest = {(s >> 4, s & 15) for s in samp[1:]}
            if comps == 3 and rest != {(1, 1)}:
                raise ValueError("unsupported JPEG chroma sampling")
            is_rgb = adobe_transform == 0 or ids == [ord("R"), ord("G"), ord("B")]
            return width, height, comps, (h0, v0), is_rgb
        if marker in (0xC2, 0xC3) or (0xC5 <= marker <= 0xCF and marker not in (0xC8, 0xCC)):
            raise ValueError("only baseline/extended sequential JPEG tiles are supported")
        if marker == 0xDA:
            break
        pos += 2 + length
    raise ValueError("no JPEG frame header found")


def _noisy_tissue_tile(tile_size: int, quality: int) -> bytes:
    """One tissue-looking tile with lots of fine detail, so each stored tile is big."""
    painter = Painter(tile_size * 4, tile_size * 4, 9001, 0.25, "HE")
    mask = painter.shape.field(pixel_centres(0, tile_size * 4, 1), pixel_centres(0, tile_size * 4, 1)) > 0
    # pick the most tissue-rich tile position in a 4x4 neighbourhood
    best = max(
        ((ty, tx) for ty in range(4) for tx in range(4)),
        key=lambda p: mask[p[0] * tile_size:(p[0] + 1) * tile_size, p[1] * tile_size:(p[1] + 1) * tile_size].mean(),
    )
    tile = painter.render(best[1] * tile_size, best[0] * tile_size, tile_size, tile_size, 1.0, 0).astype(np.int16)
    rng = np.random.default_rng(4242)
    tile += rng.integers(-14, 15, tile.shape, dtype=np.int16)
    tile = np.clip(tile, 0, 255).astype(np.uint8)
    return bytes(
        imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(1, 1))
    )


def write_large_slide_from_tile(
    path: Path,
    width: int,
    height: int,
    tile_jpeg: bytes | None = None,
    *,
    tile_size: int = 512,
    vendor: Vendor = "aperio",
    mpp: float = 0.25,
    bigtiff: bool = True,
) -> SyntheticSlide:
    """Write a big slide at disk speed by repeating one precompressed JPEG tile on every level.

    For large-file tests (e.g. > 4 GiB BigTIFF ingest), not for image realism.  Tags are derived
    from the tile's own JPEG header (size, subsampling, YCbCr vs RGB), so readers decode it right.
    """
    path = Path(path)
    check_slide_args(width, height, tile_size, vendor, mpp)
    if tile_jpeg is None:
        tile_jpeg = _noisy_tissue_tile(tile_size, 97)
    tile_w, tile_h, comps, subsampling, is_rgb = _jpeg_frame_info(tile_jpeg)
    if (tile_w, tile_h) != (tile_size, tile_size) or comps != 3:
        raise ValueError(f"tile_jpeg must be a {tile_size}x{tile_size} 3-component JPEG")
    decoded = np.asarray(imagecodecs.jpeg8_decode(tile_jpeg))
    dims = level_dimensions(width, height, tile_size)
    label = default_label_text(0x1A46E)
    phi = make_phi(label, 0x1A46E)
    tw, th = thumbnail_size(width, height)

    def tiles(level: int) -> Iterator[bytes]:
        lw, lh = dims[level]
        for _ in range(-(-lw // tile_size) * -(-lh // tile_size)):
            yield tile_jpeg

    def thumbnail() -> np.ndarray:
        # the slide is the tile repeated; shrink one tile by the thumbnail scale and repeat that
        scale = tw / width
        cell = max(1, round(tile_size * scale))
        small = np.asarray(Image.fromarray(decoded).resize((cell, cell), Image.Resampling.BOX))
        reps = (-(-th // cell), -(-tw // cell), 1)
        return np.ascontiguousarray(np.tile(small, reps)[:th, :tw])

    layout = SlideLayout(
        path=path, vendor=vendor, width=width, height=height, tile_size=tile_size, mpp=mpp,
        objective_power=40, quality=97, bigtiff=bigtiff, label_text=label, phi=phi, level_dims=dims,
        level_tiles=tiles, thumbnail=thumbnail, subsampling=subsampling, rgb_jpeg=is_rgb,
    )
    return write_slide_file(layout)
