"""Wire formats of the stored-pixel routes the SDK reads: a slide's stored pyramid and its frames."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from slidebank.api.schemas import TypedDict, fixed_array, wire

Mpp = Annotated[list[float], fixed_array(2, "number", description="µm per level-0 pixel, [x, y]")]


@wire
class StoredLevel(TypedDict):
    """One stored level: its size, its tile grid, and how each stored frame (tile) is encoded."""

    width: int
    height: int
    downsample: Annotated[float, Field(description="Level-0 pixels per pixel of this level, as OpenSlide")]
    tile_width: int
    tile_height: int
    columns: int
    rows: int
    transfer_syntax: Annotated[str, Field(description="DICOM transfer syntax UID of the frames")]
    media_type: Annotated[str, Field(description="Media type of one frame, e.g. image/jpeg")]
    photometric: Annotated[str, Field(description="DICOM photometric interpretation, e.g. YBR_FULL_422")]
    samples_per_pixel: int
    bits_stored: int


@wire
class StoredPyramid(TypedDict):
    """What a client needs to read a stored slide itself, in OpenSlide's vocabulary."""

    slide_id: str
    levels: list[StoredLevel]
    mpp: Annotated[Mpp | None, Field(description="µm per level-0 pixel [x, y]; null when the pixel size is unknown")]
    properties: Annotated[dict[str, str], Field(description="OpenSlide-style properties (openslide.mpp-x, …)")]
    max_frames_per_request: Annotated[int, Field(description="Most frames one /frames request may ask for")]
