"""IIIF Image API 3.0, compliance level 2, over a stored pyramid.

Parsing and the region/size arithmetic are the IIIF reference implementation's (`iiif` package,
by the author of the official validator); this module maps the result onto the stored pyramid.
A request that is exactly a stored tile (what OpenSeadragon and Mirador ask for, given the
`tiles` in info.json) is answered with the stored JPEG bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from iiif.error import IIIFError
from iiif.manipulator import IIIFManipulator
from iiif.request import IIIFRequest
from PIL import Image, ImageOps

from slidebank.tiles.encode import MEDIA_TYPES, apply_quality, encode_image
from slidebank.tiles.pyramid import RenderTooLarge, SlidePyramid

API_VERSION = "3.0"
CONTEXT = "http://iiif.io/api/image/3/context.json"
PROFILE_URI = "http://iiif.io/api/image/3/level2.json"
# Largest rendered image: bounds memory per request (about 50 MB of RGB) on gigapixel slides.
MAX_WIDTH = MAX_HEIGHT = 8192
MAX_AREA = 4096 * 4096

__all__ = ["IIIFError", "IIIFImage", "iiif_image", "info_json", "PROFILE_URI"]


@dataclass(frozen=True)
class IIIFImage:
    content: bytes
    media_format: str  # key of encode.MEDIA_TYPES
    passed_through: bool
    level: int | None = None  # the stored level, when the answer is one of its tiles

    @property
    def worth_caching(self) -> bool:
        return not self.passed_through


@dataclass(frozen=True)
class _Plan:
    region: tuple[int, int, int, int]  # level-0 pixels
    size: tuple[int, int]
    mirror: bool
    rotation: float
    quality: str
    image_format: str


def info_json(pyramid: SlidePyramid, service_id: str) -> dict[str, Any]:
    """The image information document; `tiles` mirror the stored pyramid so clients hit stored tiles."""
    return {
        "@context": CONTEXT,
        "id": service_id,
        "type": "ImageService3",
        "protocol": "http://iiif.io/api/image",
        "profile": "level2",
        "width": pyramid.width,
        "height": pyramid.height,
        "maxWidth": MAX_WIDTH,
        "maxHeight": MAX_HEIGHT,
        "maxArea": MAX_AREA,
        "sizes": [
            {"width": level.width, "height": level.height}
            for level in reversed(pyramid.levels)
            if level.width * level.height <= MAX_AREA and max(level.width, level.height) <= MAX_WIDTH
        ],
        "tiles": [
            {
                "width": pyramid.tile_size,
                "height": pyramid.tile_size,
                "scaleFactors": [level.downsample for level in pyramid.levels],
            }
        ],
        "extraFormats": ["webp", "gif", "tif"],
        "extraQualities": ["color", "gray", "bitonal"],
        "extraFeatures": ["mirroring", "rotationArbitrary", "sizeUpscaling", "profileLinkHeader"],
    }


def iiif_image(
    pyramid: SlidePyramid, region: str, size: str, rotation: str, quality_and_format: str
) -> IIIFImage:
    """Render one IIIF image request; IIIFError (with its HTTP code) for anything invalid."""
    plan = _plan(pyramid, region, size, rotation, quality_and_format)
    stored = _stored_tile(pyramid, plan)
    if stored is not None:
        return IIIFImage(stored[0], "jpg", True, stored[1])
    image = pyramid.render(plan.region, plan.size)
    image = apply_quality(image, plan.quality)
    if plan.mirror:
        image = ImageOps.mirror(image)
    image = _rotate(image, plan.rotation)
    return IIIFImage(encode_image(image, plan.image_format), plan.image_format, False)


def _plan(pyramid: SlidePyramid, region: str, size: str, rotation: str, quality_and_format: str) -> _Plan:
    request = IIIFRequest(api_version=API_VERSION)
    request.parse_url(f"id/{region}/{size}/{rotation}/{quality_and_format}")
    if request.format not in MEDIA_TYPES:
        raise IIIFError(code=400, parameter="format", text=f"unsupported format {request.format!r}")

    geometry = IIIFManipulator(api_version=API_VERSION)
    geometry.request = request
    geometry.max_width, geometry.max_height, geometry.max_area = MAX_WIDTH, MAX_HEIGHT, MAX_AREA
    geometry.width, geometry.height = pyramid.width, pyramid.height
    x, y, w, h = geometry.region_to_apply()
    if x is None:
        x, y, w, h = 0, 0, pyramid.width, pyramid.height
    x, y, w, h = int(x), int(y), int(w), int(h)
    if x >= pyramid.width or y >= pyramid.height or w <= 0 or h <= 0:
        raise IIIFError(code=400, parameter="region", text="region is outside the image")

    geometry.width, geometry.height = w, h
    out_w, out_h = geometry.size_to_apply()
    if out_w is None:
        out_w, out_h = w, h
    if out_w > MAX_WIDTH or out_h > MAX_HEIGHT or out_w * out_h > MAX_AREA:
        raise IIIFError(
            code=400, parameter="size",
            text=f"{out_w}×{out_h} is larger than this server renders ({MAX_WIDTH} wide, {MAX_AREA} pixels)",
        )
    mirror, angle = geometry.rotation_to_apply()
    if not math.isfinite(angle):
        raise IIIFError(code=400, parameter="rotation", text="rotation must be a finite number of degrees")
    turned_w, turned_h = _rotated_size(out_w, out_h, angle)
    if turned_w > MAX_WIDTH or turned_h > MAX_HEIGHT or turned_w * turned_h > MAX_AREA:
        raise IIIFError(code=400, parameter="rotation",
                        text=f"rotated, the image would be {turned_w}×{turned_h}: larger than this server renders")
    try:
        pyramid.render_level((x, y, w, h), (out_w, out_h))  # the work is bounded before any pixel is read
    except RenderTooLarge as error:
        raise IIIFError(code=400, parameter="size", text=str(error)) from None
    return _Plan((x, y, w, h), (out_w, out_h), mirror, angle, geometry.quality_to_apply(), request.format)


def _rotated_size(width: int, height: int, angle: float) -> tuple[int, int]:
    """The bounding box of a width×height image turned by `angle` degrees (PIL's expand=True)."""
    radians = math.radians(angle % 360)
    cos, sin = abs(math.cos(radians)), abs(math.sin(radians))
    return math.ceil(width * cos + height * sin - 1e-9), math.ceil(width * sin + height * cos - 1e-9)


def _stored_tile(pyramid: SlidePyramid, plan: _Plan) -> tuple[bytes, int] | None:
    """The stored frame and its level, if the request is exactly one tile of a stored level as JPEG colour."""
    if not pyramid.stored_jpeg or plan.mirror or plan.rotation or plan.image_format != "jpg":
        return None
    if plan.quality not in ("default", "color"):
        return None
    x, y, w, h = plan.region
    scale = w / plan.size[0]
    level = pyramid.stored_level(round(scale)) if scale >= 1 else None
    if level is None:
        return None
    span = pyramid.tile_size * level.downsample
    if x % span or y % span:
        return None
    if (w, h) != (min(span, pyramid.width - x), min(span, pyramid.height - y)):
        return None
    if plan.size != (math.ceil(w / level.downsample), math.ceil(h / level.downsample)):
        return None
    return pyramid.encoded_tile(level, x // span, y // span), level.index


def _rotate(image: Image.Image, angle: float) -> Image.Image:
    if angle == 0:
        return image
    quarter = {90.0: Image.Transpose.ROTATE_270, 180.0: Image.Transpose.ROTATE_180, 270.0: Image.Transpose.ROTATE_90}
    if angle in quarter:  # PIL turns counter-clockwise, IIIF clockwise
        return image.transpose(quarter[angle])
    background = 1 if image.mode == "1" else 255 if image.mode == "L" else (255, 255, 255)
    resample = Image.Resampling.NEAREST if image.mode == "1" else Image.Resampling.BICUBIC
    return image.rotate(-angle, resample=resample, expand=True, fillcolor=background)
