"""Where each stored JPEG frame lies in its DICOM file, so a tile is one positioned read.

wsidicom answers the same question through its level/instance/geometry objects, which costs
more than the read itself on the hot path (bench/tiles.py, py-spy). This table is built once
per opened slide from the file's offset table (pydicom parses it) and covers the common case:
one file per level, TILED_FULL, one focal plane and optical path, one fragment per frame.
Anything else returns None and tiles go through wsidicom, which handles every layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pydicom
from pydicom.encaps import parse_basic_offsets, parse_fragments

from slidebank.storage.blobstore import BlobFile

ITEM_HEADER = 8  # (FFFE,E000) tag + 4-byte length
PIXEL_DATA_HEADER = 12  # (7FE0,0010) tag, "OB", 2 reserved bytes, undefined length


@dataclass(frozen=True)
class LevelFrames:
    """Byte ranges of a level's frames in row-major tile order."""

    width: int  # level size in pixels: identifies the level
    cols: int
    positions: tuple[tuple[int, int], ...]  # (offset of the JPEG bytes, length)

    def read(self, blob: BlobFile, col: int, row: int) -> bytes:
        offset, length = self.positions[row * self.cols + col]
        return blob.pread(offset, length)


def level_frames(blob: BlobFile) -> LevelFrames | None:
    """The frame table of one stored DICOM WSI file, or None if its layout is not the simple one."""
    with blob.stream() as handle:
        dataset = pydicom.dcmread(handle, stop_before_pixels=True)
        pixel_data = handle.tell()
        if not _simple_layout(dataset):
            return None
        cols = -(-int(dataset.TotalPixelMatrixColumns) // int(dataset.Columns))
        rows = -(-int(dataset.TotalPixelMatrixRows) // int(dataset.Rows))
        frames = int(dataset.NumberOfFrames)
        if frames != cols * rows:
            return None
        handle.seek(pixel_data + PIXEL_DATA_HEADER)
        basic_offsets = parse_basic_offsets(handle)
        first_item = handle.tell()
        if len(basic_offsets) == frames:
            items = [first_item + offset for offset in basic_offsets]
        else:
            count, items = parse_fragments(handle)
            if count != frames:
                return None  # several fragments per frame
        positions = []
        for item in items:
            handle.seek(item + 4)
            (length,) = struct.unpack("<I", handle.read(4))
            positions.append((item + ITEM_HEADER, length))
    return LevelFrames(int(dataset.TotalPixelMatrixColumns), cols, tuple(positions))


def _simple_layout(dataset: pydicom.Dataset) -> bool:
    return (
        dataset.get("DimensionOrganizationType") == "TILED_FULL"
        and int(dataset.get("TotalPixelMatrixFocalPlanes", 1)) == 1
        and int(dataset.get("NumberOfOpticalPaths", 1)) == 1
        and dataset.file_meta.TransferSyntaxUID.is_encapsulated
        and "NumberOfFrames" in dataset
    )
