"""Turning rendered pixels into the bytes a client asked for (format and IIIF quality)."""

from __future__ import annotations

import io

from PIL import Image

JPEG_QUALITY = 90

MEDIA_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "tif": "image/tiff",
}
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "tif": "TIFF"}
QUALITIES = ("default", "color", "gray", "bitonal")


def apply_quality(image: Image.Image, quality: str) -> Image.Image:
    """IIIF qualities: slides are colour, so `default` is `color`."""
    if quality in ("default", "color"):
        return image
    gray = image.convert("L")
    if quality == "gray":
        return gray
    return gray.point(lambda value: 255 if value >= 128 else 0, mode="1")


def encode_image(image: Image.Image, image_format: str) -> bytes:
    """Encode for the wire; speed matters more than size for PNG (these are tiles, not archives)."""
    buffer = io.BytesIO()
    if image_format == "jpg":
        if image.mode not in ("RGB", "L"):
            image = image.convert("L" if image.mode == "1" else "RGB")
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    elif image_format == "png":
        image.save(buffer, "PNG", compress_level=1)
    else:
        if image_format == "webp" and image.mode == "1":
            image = image.convert("L")
        image.save(buffer, _PIL_FORMATS[image_format])
    return buffer.getvalue()
