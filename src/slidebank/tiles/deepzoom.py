"""Deep Zoom (DZI) over a stored pyramid, tile size = stored tile size, no overlap.

Deep Zoom level L of N (N = ceil(log2(max(width, height)))) is the image reduced by 2^(N-L),
sizes rounded up. Stored levels are the same reductions, so their tiles are the stored frames;
the small levels below the stored pyramid (down to 1×1) are rendered from its smallest level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slidebank.tiles.encode import encode_image
from slidebank.tiles.pyramid import SlidePyramid

FORMATS = {"jpeg": "jpg", "jpg": "jpg", "png": "png"}


class TileNotFound(LookupError):
    """No such tile or level: answered 404."""


@dataclass(frozen=True)
class DeepZoomTile:
    content: bytes
    media_format: str  # key of encode.MEDIA_TYPES
    passed_through: bool  # the stored bytes, not decoded or re-encoded
    worth_caching: bool  # rendered, or an edge tile cropped on every read


def max_level(pyramid: SlidePyramid) -> int:
    return max(0, math.ceil(math.log2(max(pyramid.width, pyramid.height))))


def dzi_xml(pyramid: SlidePyramid) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
        f'TileSize="{pyramid.tile_size}" Overlap="0" Format="jpeg">'
        f'<Size Width="{pyramid.width}" Height="{pyramid.height}"/></Image>\n'
    )


def passes_through(pyramid: SlidePyramid, level: int, extension: str) -> bool:
    """Whether a tile of this level is a stored frame handed over as is (cheap enough to serve inline)."""
    top = max_level(pyramid)
    if FORMATS.get(extension) != "jpg" or not pyramid.stored_jpeg or not 0 <= level <= top:
        return False
    return pyramid.stored_level(2 ** (top - level)) is not None


def deepzoom_tile(pyramid: SlidePyramid, level: int, col: int, row: int, extension: str) -> DeepZoomTile:
    """The tile at Deep Zoom `level`, (`col`, `row`); TileNotFound outside the pyramid."""
    image_format = FORMATS.get(extension)
    top = max_level(pyramid)
    if image_format is None or not 0 <= level <= top:
        raise TileNotFound(f"no Deep Zoom level {level} with format {extension!r}")
    downsample = 2 ** (top - level)
    width, height = math.ceil(pyramid.width / downsample), math.ceil(pyramid.height / downsample)
    size = pyramid.tile_size
    if not (0 <= col < math.ceil(width / size) and 0 <= row < math.ceil(height / size)):
        raise TileNotFound(f"no tile {col}_{row} at Deep Zoom level {level}")

    stored = pyramid.stored_level(downsample)
    if stored is not None:
        if image_format == "jpg" and pyramid.stored_jpeg:
            at_edge = (col + 1) * size > width or (row + 1) * size > height
            return DeepZoomTile(pyramid.encoded_tile(stored, col, row), "jpg", True, at_edge)
        image = pyramid.decoded_tile(stored, col, row)
        return DeepZoomTile(encode_image(image, image_format), image_format, False, True)

    x, y = col * size * downsample, row * size * downsample
    region = (x, y, min(size * downsample, pyramid.width - x), min(size * downsample, pyramid.height - y))
    out_size = (min(size, width - col * size), min(size, height - row * size))
    return DeepZoomTile(encode_image(pyramid.render(region, out_size), image_format), image_format, False, True)
