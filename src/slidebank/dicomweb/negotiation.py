"""Which representation of frames or instances a WADO-RS request accepts (PS3.18 8.7.3).

A request's Accept header lists media ranges, each with an optional `type` (inside
multipart/related), `transfer-syntax` (`*`: as stored) and `q`. The first acceptable one, by q and
then order, that Slidebank can produce wins: the stored bytes when the syntax asked is the stored
one (or `*`), else a transcode to one of TRANSCODE_TARGETS; nothing acceptable is a 406.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
# Frame media types and the transfer syntaxes they may carry; the first is the default (PS3.18 table 8.7.3-2).
FRAME_SYNTAXES: dict[str, tuple[str, ...]] = {
    "application/octet-stream": (EXPLICIT_VR_LITTLE_ENDIAN,),
    "image/jpeg": (JPEG_BASELINE, "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"),
    "image/jls": (JPEG_LS_LOSSLESS, "1.2.840.10008.1.2.4.81"),
    "image/jp2": (JPEG_2000_LOSSLESS, "1.2.840.10008.1.2.4.91"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
}
TRANSCODE_TARGETS = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS})
_PARAMETER = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("[^"]*"|[^;,]*)')


class NotAcceptable(Exception):
    """No representation the request accepts can be produced (406)."""


@dataclass(frozen=True)
class MediaRange:
    media_type: str  # e.g. multipart/related, image/jpeg, */*
    part_type: str | None  # the `type` parameter of multipart/related
    transfer_syntax: str | None
    quality: float


@dataclass(frozen=True)
class FrameAnswer:
    multipart: bool
    media_type: str  # of each frame
    transfer_syntax: str
    transcode: bool


def media_ranges(accept: str | None) -> list[MediaRange]:
    """The Accept header's ranges, most preferred first (no header: `*/*`)."""
    ranges = []
    for index, item in enumerate(_split(accept or "*/*")):
        media_type, _, rest = item.partition(";")
        parameters = {k.lower(): v.strip().strip('"') for k, v in _PARAMETER.findall(";" + rest)}
        try:
            quality = float(parameters.get("q", "1"))
        except ValueError:
            quality = 1.0
        ranges.append((-quality, index, MediaRange(media_type.strip().lower(), parameters.get("type", "").lower()
                                                   or None, parameters.get("transfer-syntax"), quality)))
    return [media_range for _, _, media_range in sorted(ranges, key=lambda r: (r[0], r[1])) if media_range.quality > 0]


def _split(header: str) -> list[str]:
    """Comma-separated items, commas inside quotes kept."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for character in header:
        if character == '"':
            quoted = not quoted
        if character == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(character)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def frame_answer(accept: str | None, stored_syntax: str, frames: int, stored_media_type: str) -> FrameAnswer:
    """How to answer a request for `frames` frames stored in `stored_syntax`."""
    for media_range in media_ranges(accept):
        if media_range.media_type == "multipart/related":
            multipart, frame_type = True, media_range.part_type or "application/octet-stream"
        elif media_range.media_type in ("*/*", "multipart/*"):
            multipart, frame_type = True, "application/octet-stream"
        elif frames == 1:
            multipart, frame_type = False, media_range.media_type
        else:
            continue  # a single-part type cannot carry several frames
        syntax = media_range.transfer_syntax
        if syntax == "*":
            if frame_type in (stored_media_type, "application/octet-stream", "*/*") or multipart and frame_type == "*":
                return FrameAnswer(multipart, stored_media_type, stored_syntax, transcode=False)
            continue
        if frame_type in ("*/*", "image/*") and syntax is None:
            return FrameAnswer(multipart, stored_media_type, stored_syntax, transcode=False)
        allowed = FRAME_SYNTAXES.get(frame_type)
        if allowed is None:
            continue
        wanted = syntax or allowed[0]
        if wanted not in allowed:
            continue
        if wanted == stored_syntax:
            return FrameAnswer(multipart, frame_type, wanted, transcode=False)
        if wanted in TRANSCODE_TARGETS:
            return FrameAnswer(multipart, frame_type, wanted, transcode=True)
    raise NotAcceptable(f"frames are stored as {stored_syntax}; none of the accepted representations can be made "
                        f"from them (transcoding offers {', '.join(sorted(TRANSCODE_TARGETS))})")


def instance_answer(accept: str | None, stored_syntax: str) -> None:
    """Instances are sent as stored: refuse (406) a request that accepts only another transfer syntax."""
    for media_range in media_ranges(accept):
        wanted_type = media_range.part_type if media_range.media_type == "multipart/related" else media_range.media_type
        if wanted_type not in (None, "application/dicom", "*/*", "*"):
            continue
        if media_range.transfer_syntax in (None, "*", stored_syntax):
            return
    raise NotAcceptable(f"instances are sent as stored ({stored_syntax}, or transfer-syntax=*)")
