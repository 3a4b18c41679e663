"""Stored frames away from their files: how they are encoded, and decoding them as the reader does.

A client that fetches a slide's stored frames (the SDK's remote slide) decodes them itself, so
that no lossy re-encode happens in between. To give exactly the pixels `StoredSlide` gives, it
decodes the same way: baseline JPEG with libjpeg-turbo (accurate IDCT), everything else with the
decoder wsidicom picks for the transfer syntax, then to 8-bit RGB as the reader converts.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from wsidicom.codec import Decoder

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_DIRECT_PHOTOMETRIC = frozenset({"YBR_FULL_422", "YBR_FULL", "RGB"})
MEDIA_TYPES = {  # transfer syntax -> the media type of one frame (as DICOMweb names them)
    JPEG_BASELINE: "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}


class FrameDecodeError(ValueError):
    """A frame that cannot be decoded as its level says it is encoded."""


@dataclass(frozen=True)
class FrameEncoding:
    """The encoding of every frame of one stored level."""

    transfer_syntax: str
    photometric: str
    samples_per_pixel: int
    bits_stored: int
    tile_width: int
    tile_height: int

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES.get(self.transfer_syntax, "application/octet-stream")

    @property
    def direct_jpeg(self) -> bool:
        """Frames the reader decodes itself with libjpeg-turbo (8-bit colour baseline JPEG)."""
        return (self.transfer_syntax == JPEG_BASELINE and self.samples_per_pixel == 3
                and self.bits_stored == 8 and self.photometric in _DIRECT_PHOTOMETRIC)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FrameDecoder:
    """Decodes the stored frames of one level to (tile_height, tile_width, 3) uint8 RGB; thread-safe."""

    def __init__(self, encoding: FrameEncoding) -> None:
        self.encoding = encoding
        self._decoder: Decoder | None = None if encoding.direct_jpeg else self._wsidicom_decoder()

    def _wsidicom_decoder(self) -> Decoder:
        from pydicom.uid import UID
        from wsidicom.codec import Decoder
        from wsidicom.geometry import Size

        encoding = self.encoding
        try:
            return Decoder.create(UID(encoding.transfer_syntax), encoding.samples_per_pixel, encoding.bits_stored,
                                  Size(encoding.tile_width, encoding.tile_height), encoding.photometric)
        except ValueError as error:
            raise FrameDecodeError(f"no decoder for {encoding.transfer_syntax}: {error}") from error

    def decode(self, data: bytes, rows: int | None = None) -> np.ndarray:
        """At least the top `rows` rows (default: all) of a frame, RGB; as `StoredSlide` decodes it."""
        from slidebank.slides.reader import NotDirectFrame, StoredSlideError, as_rgb, decode_jpeg_frame

        encoding = self.encoding
        decoder = self._decoder
        if decoder is None:
            try:
                return decode_jpeg_frame(data, encoding.tile_width, encoding.tile_height, rows)
            except StoredSlideError as error:
                raise FrameDecodeError(str(error)) from error
            except (NotDirectFrame, ValueError, IndexError, struct.error):  # an odd frame: as the reader, through wsidicom
                decoder = self._decoder = self._wsidicom_decoder()
        try:
            pixels = as_rgb(decoder.decode(data), encoding.bits_stored)
        except Exception as error:  # noqa: BLE001  # third-party codecs raise anything on bad bytes
            raise FrameDecodeError(f"cannot decode a {encoding.media_type} frame: {error}") from error
        if pixels.shape != (encoding.tile_height, encoding.tile_width, 3):
            raise FrameDecodeError(f"a frame decoded to {pixels.shape[1]}x{pixels.shape[0]}, tiles are "
                                   f"{encoding.tile_width}x{encoding.tile_height}")
        return pixels
