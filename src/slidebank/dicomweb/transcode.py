"""Frames in a transfer syntax other than the stored one, for clients that ask for it.

Decoding is the reader's (`slides.frames.FrameDecoder`, as the SDK and tiles decode); encoding is
wsidicom's codecs, the ones ingest writes with. The result is what DICOM says a frame of that syntax
is: raw interleaved RGB for Explicit VR Little Endian, a code-stream otherwise.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from wsidicom.codec import Channels, Encoder, Jpeg2kSettings, JpegLsSettings, JpegSettings, Settings, Subsampling

from slidebank.dicomweb.negotiation import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_LS_LOSSLESS,
)
from slidebank.slides.frames import FrameDecoder, FrameEncoding

_SETTINGS: dict[str, Settings] = {
    JPEG_BASELINE: JpegSettings(quality=95, subsampling=Subsampling.R444),
    JPEG_LS_LOSSLESS: JpegLsSettings(level=0, bits=8, channels=Channels.RGB),
    JPEG_2000_LOSSLESS: Jpeg2kSettings(levels=[0], bits=8, channels=Channels.RGB),
}


@cache
def _encoder(syntax: str) -> Encoder:
    return Encoder.create_for_settings(_SETTINGS[syntax])


def transcode(frame: bytes, encoding: FrameEncoding, syntax: str) -> bytes:
    """One stored frame, decoded and written in `syntax` (one of negotiation.TRANSCODE_TARGETS)."""
    pixels = FrameDecoder(encoding).decode(frame)
    if syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return _encoder(syntax).encode(pixels)
