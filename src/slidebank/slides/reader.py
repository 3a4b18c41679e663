"""The one reader of a stored slide, shaped like OpenSlide (and tiffslide): `StoredSlide`.

Callers already know OpenSlide's vocabulary (`dimensions`, `level_dimensions`, `level_downsamples`,
`properties`, `read_region` with level-0 coordinates, `get_thumbnail`, ...), so a stored slide
speaks it exactly; hot paths get numpy (`read_region_array`, `read_level_array`) and tile servers
get stored frames as encoded bytes (`read_encoded_tile`) or pixels (`read_tile`).

Why it is fast. Stored slides are DICOM WSI with one JPEG frame per tile. For the common layout
(TILED_FULL, one file per level, 8-bit baseline JPEG, colour) a region is read without wsidicom:
the frame table (from the file's offset table) gives each frame's byte range, one positioned
read fetches it from the decrypting blob, libjpeg-turbo decodes it into RGB
(or RGBA) with a per-thread handle and the GIL released, and numpy copies the needed rectangle.
Two more things save work on the random, unaligned patches samplers ask for:
  - frames are decoded only down to the last row a region needs (a baseline JPEG's rows are
    coded top to bottom, so telling the decoder the image is shorter stops it there; two rows of
    margin keep the chroma upsampling of the kept rows identical to a full decode);
  - decoded frames stay in a small LRU shared by all open slides (bounded in bytes,
    SLIDEBANK_FRAME_CACHE_MB, default 128), since neighbouring patches share frames; a frame is
    kept from its second decode on, so random reads over a large slide do not churn it.
Accurate (integer) IDCT, as OpenSlide, Pillow and so wsidicom use: pixels equal theirs exactly.

Everything else (JPEG 2000, JPEG-LS, uncompressed, 16-bit or grey images, TILED_SPARSE, several
files per level: focal planes, optical paths, concatenations) is read through wsidicom, opened
lazily on the same blobs, so results are always right; `fast_levels` says which levels are fast.
Frames in several fragments stay on the direct path (the fragments are joined): wsidicom 0.31
cannot read them.

Coordinates follow OpenSlide: `location` is in level-0 pixels, `size` in pixels of the level read;
above level 0 a location maps to the nearest level pixel (OpenSlide interpolates between pixels
there; tiffslide truncates). Pixels outside the slide are transparent black (alpha 0) in
`read_region` and black in arrays.
Thread-safe: share one StoredSlide between the threads of a tile server or a data loader.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import platform
import struct
import threading
from collections.abc import Sequence
from ctypes.util import find_library
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from cachetools import LRUCache
from PIL import Image

from slidebank.slides.frames import JPEG_BASELINE, FrameEncoding
from slidebank.slides.vocabulary import OpenSlideVocabulary, region_size

if TYPE_CHECKING:
    from wsidicom import WsiDicom

    from slidebank.storage.blobstore import BlobFile

__all__ = [
    "FRAME_CACHE",
    "PROPERTY_NAME_MPP_X",
    "PROPERTY_NAME_MPP_Y",
    "PROPERTY_NAME_OBJECTIVE_POWER",
    "PROPERTY_NAME_VENDOR",
    "FrameCache",
    "StoredSlide",
    "StoredSlideError",
    "as_rgb",
    "NotDirectFrame",
    "decode_jpeg_frame",
    "JPEG_BASELINE",
]

# openslide-python's property names, so code written for OpenSlide reads them unchanged.
PROPERTY_NAME_VENDOR = "openslide.vendor"
PROPERTY_NAME_MPP_X = "openslide.mpp-x"
PROPERTY_NAME_MPP_Y = "openslide.mpp-y"
PROPERTY_NAME_OBJECTIVE_POWER = "openslide.objective-power"
PROPERTY_NAME_LEVEL_COUNT = "openslide.level-count"
VENDOR = "slidebank"

_FAST_PHOTOMETRIC = frozenset({"YBR_FULL_422", "YBR_FULL", "RGB"})
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD) after the last item
_UNDEFINED_LENGTH = b"\xff\xff\xff\xff"
_ITEM_HEADER = 8  # (FFFE,E000) + 4-byte length
_PIXEL_DATA_HEADER = 12  # (7FE0,0010), "OB", 2 reserved bytes, undefined length
# Rows decoded past the last one a region needs, so that the vertical chroma upsampling of the
# kept rows sees the same neighbours as in a full decode (4:2:0 needs one; tested pixel-exact).
_CONTEXT_ROWS = 2


class StoredSlideError(Exception):
    """The stored files are not a readable slide (no pyramid, damaged frame table or frame)."""


class NotDirectFrame(Exception):
    """This level (or frame) cannot use the direct JPEG path; read it through wsidicom."""


# --------------------------------------------------------------------------------------------
# Decoded-frame cache


class FrameCache:
    """Decoded frames (read-only arrays) of every open slide, least recently used out first.

    Bounded in bytes; thread-safe. A frame is kept from the second time it is decoded (the first
    time only its key is noted): random patches over a large slide rarely come back to a frame,
    and keeping each would only churn memory, while overlapping patches and sliding windows come
    back at once. A frame decoded only partly (its top rows) is kept as such and replaced when
    more rows are needed. Entries of a closed slide are dropped when it closes.
    """

    def __init__(self, max_bytes: int, *, remembered_keys: int = 16384) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._lock = threading.Lock()
        self._entries: LRUCache[tuple[int, int, int, int], np.ndarray] = LRUCache(
            max(self.max_bytes, 1), getsizeof=lambda array: array.nbytes
        )
        self._decoded_once: LRUCache[tuple[int, int, int, int], bool] = LRUCache(remembered_keys)

    def get(self, key: tuple[int, int, int, int]) -> np.ndarray | None:
        if not self.max_bytes:
            return None
        with self._lock:
            return self._entries.get(key)

    def put(self, key: tuple[int, int, int, int], pixels: np.ndarray) -> None:
        if not self.max_bytes or pixels.nbytes > self.max_bytes:
            return
        with self._lock:
            if self._decoded_once.pop(key, None) is None and key not in self._entries:
                self._decoded_once[key] = True  # the first time: remember, do not keep
                return
            kept = self._entries.get(key)
            if kept is None or kept.shape[0] < pixels.shape[0]:
                self._entries[key] = pixels

    def discard(self, slide: int) -> None:
        """Forget the frames of one slide (its token)."""
        with self._lock:
            for entries in (self._entries, self._decoded_once):
                for key in [key for key in entries if key[0] == slide]:
                    del entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._decoded_once.clear()

    @property
    def current_bytes(self) -> int:
        with self._lock:
            return int(self._entries.currsize) if self.max_bytes else 0


FRAME_CACHE = FrameCache(int(os.environ.get("SLIDEBANK_FRAME_CACHE_MB", "128")) * 1024 * 1024)
_slide_tokens = itertools.count(1)  # never reused, so a new slide never sees a closed one's frames


# --------------------------------------------------------------------------------------------
# libjpeg-turbo, called directly: one decompressor per thread, decoding into numpy buffers


_TJPF_RGB, _TJPF_RGBA = 0, 7
_TJERR_WARNING = 0


class _TurboJpeg:
    """The TurboJPEG C API (libturbojpeg, as PyTurboJPEG finds it) through ctypes.

    ctypes releases the GIL during each call, so decoding scales with threads. Errors are
    returned, never longjmp'ed through Python. Warnings (e.g. the bytes left unread after a
    shortened decode) are not errors: libjpeg-turbo and Pillow accept them too.
    """

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(_turbojpeg_path())
        lib = self._lib
        lib.tjInitDecompress.restype = ctypes.c_void_p
        lib.tjInitDecompress.argtypes = []
        lib.tjDestroy.restype = ctypes.c_int
        lib.tjDestroy.argtypes = [ctypes.c_void_p]
        lib.tjDecompress2.restype = ctypes.c_int
        lib.tjDecompress2.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
            ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ]
        lib.tjGetErrorCode.restype = ctypes.c_int
        lib.tjGetErrorCode.argtypes = [ctypes.c_void_p]
        lib.tjGetErrorStr2.restype = ctypes.c_char_p
        lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
        self._local = threading.local()

    def _handle(self) -> int:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._local.handle = _Decompressor(self._lib)
        return handle.pointer

    def decode_into(self, data: np.ndarray, out: np.ndarray) -> None:
        """Decode the JPEG in `data` (uint8) into `out` (rows x width x 3|4, rows contiguous).

        `out` has the size the JPEG header gives (the caller checked); 4 channels decode as RGBA
        with alpha 255.
        """
        rows, width, channels = out.shape
        handle = self._handle()
        status = self._lib.tjDecompress2(
            handle, data.ctypes.data, data.size, out.ctypes.data, width, out.strides[0], rows,
            _TJPF_RGBA if channels == 4 else _TJPF_RGB, 0,
        )
        if status != 0 and self._lib.tjGetErrorCode(handle) != _TJERR_WARNING:
            message = (self._lib.tjGetErrorStr2(handle) or b"unknown error").decode(errors="replace")
            raise StoredSlideError(f"cannot decode a stored JPEG frame: {message}")


class _Decompressor:
    """A TurboJPEG handle owned by one thread; destroyed with the thread's locals."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self.pointer = lib.tjInitDecompress()
        if not self.pointer:
            raise MemoryError("tjInitDecompress failed")

    def __del__(self) -> None:
        if getattr(self, "pointer", None):
            self._lib.tjDestroy(self.pointer)
            self.pointer = None


def _turbojpeg_path() -> str:
    found = find_library("turbojpeg")
    if found:
        return found
    from turbojpeg import DEFAULT_LIB_PATHS  # PyTurboJPEG's own list of places

    for path in DEFAULT_LIB_PATHS.get(platform.system(), []):
        if os.path.exists(path):
            return path
    raise OSError("libturbojpeg not found (install libturbojpeg0)")


_turbo: _TurboJpeg | None = None
_turbo_lock = threading.Lock()


def decode_jpeg_frame(data: bytes | memoryview, width: int, height: int, rows: int | None = None,
                      channels: int = 3, out: np.ndarray | None = None) -> np.ndarray:
    """At least the top `rows` rows (default: all) of a `width` x `height` baseline JPEG frame, decoded
    as the direct path decodes (libjpeg-turbo, accurate IDCT): only down to the rows needed when the
    JPEG allows it, or the whole frame into `out`. Every row returned is exact.

    Raises NotDirectFrame when the frame is not a JPEG of that size (wsidicom must read it).
    """
    frame_width, frame_height, height_at, shortenable = _jpeg_geometry(data, 0)
    if (frame_width, frame_height) != (width, height):
        raise NotDirectFrame(f"a frame is {frame_width}x{frame_height}, tiles are {width}x{height}")
    encoded = np.frombuffer(data, np.uint8)
    rows = height if rows is None else rows
    decoded = rows + _CONTEXT_ROWS  # the last rows of a cut decode lack their chroma neighbours
    if out is None and decoded < height and shortenable:
        encoded = encoded.copy()
        encoded[height_at : height_at + 2] = (decoded >> 8, decoded & 0xFF)
        out = np.empty((decoded, width, channels), np.uint8)
        _turbojpeg().decode_into(encoded, out)
        return out[:rows]
    if out is None:
        out = np.empty((height, width, channels), np.uint8)
    _turbojpeg().decode_into(encoded, out)
    return out


def _turbojpeg() -> _TurboJpeg:
    global _turbo
    if _turbo is None:
        with _turbo_lock:
            if _turbo is None:
                _turbo = _TurboJpeg()
    return _turbo


def _jpeg_geometry(data: bytes | memoryview, start: int) -> tuple[int, int, int, bool]:
    """(width, height, offset of the SOF height field, whether a shortened decode is exact).

    Walks the marker segments up to the first scan. A shortened decode (patching the height in
    SOF) is only right for a sequential Huffman JPEG whose single scan holds every component.
    """
    view = data
    position = start + 2
    if view[start] != 0xFF or view[start + 1] != 0xD8:
        raise NotDirectFrame("frame is not a JPEG (no SOI)")
    sof = None
    components = 0
    while position + 4 <= len(view):
        if view[position] != 0xFF:
            raise NotDirectFrame("malformed JPEG header")
        marker = view[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        (length,) = struct.unpack_from(">H", view, position + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            height, width = struct.unpack_from(">HH", view, position + 5)
            components = view[position + 9]
            sof = (width, height, position + 5, marker in (0xC0, 0xC1))
        elif marker == 0xDA:  # start of scan
            if sof is None:
                raise NotDirectFrame("JPEG scan before its frame header")
            width, height, height_at, sequential = sof
            interleaved = view[position + 4] == components
            return width, height, height_at - start, sequential and interleaved
        position += 2 + length
    raise NotDirectFrame("JPEG header has no scan")


# --------------------------------------------------------------------------------------------
# Levels and their frame tables


class _FrameTable:
    """Where each frame lies in the file: the offset of its first item and the bytes of its items
    (one item per frame in what Slidebank writes; several are read and joined)."""

    __slots__ = ("sizes", "starts")

    def __init__(self, starts: list[int], sizes: list[int]) -> None:
        self.starts, self.sizes = starts, sizes

    def read(self, blob: BlobFile, index: int) -> memoryview:
        """The frame's encoded bytes; its item headers, read with them, are checked."""
        size = self.sizes[index]
        raw = blob.pread(self.starts[index], size)
        pieces, position = [], 0
        while position + _ITEM_HEADER <= len(raw) and raw[position : position + 4] == _ITEM_TAG:
            (length,) = struct.unpack_from("<I", raw, position + 4)
            pieces.append(memoryview(raw)[position + _ITEM_HEADER : position + _ITEM_HEADER + length])
            position += _ITEM_HEADER + length
        if position != size or len(raw) != size or not pieces:
            raise NotDirectFrame(f"frame {index}: the offset table does not match the items")
        return pieces[0] if len(pieces) == 1 else memoryview(b"".join(pieces))


class _Level:
    """One stored level: geometry, its file and, while it qualifies, the direct JPEG path."""

    __slots__ = (
        "blob", "columns", "dataset", "downsample", "fast", "height", "index", "pixel_data",
        "rows", "table", "tile_height", "tile_width", "transfer_syntax", "width", "why_slow",
    )

    def __init__(self, index: int, dataset: pydicom.Dataset, blob: BlobFile | None, pixel_data: int,
                 base: tuple[int, int], why_slow: str | None) -> None:
        self.index = index
        self.dataset = dataset
        self.blob = blob  # None when several files make this level (then wsidicom reads it)
        self.pixel_data = pixel_data
        self.width = int(dataset.TotalPixelMatrixColumns)
        self.height = int(dataset.TotalPixelMatrixRows)
        self.tile_width = int(dataset.Columns)
        self.tile_height = int(dataset.Rows)
        self.columns = -(-self.width // self.tile_width)
        self.rows = -(-self.height // self.tile_height)
        self.downsample = (base[0] / self.width + base[1] / self.height) / 2  # as OpenSlide
        self.transfer_syntax = str(dataset.file_meta.TransferSyntaxUID)
        self.why_slow = why_slow
        self.fast = why_slow is None
        self.table: _FrameTable | None = None


def _why_slow(dataset: pydicom.Dataset, files: int) -> str | None:
    """Why a level cannot take the direct JPEG path (None: it can)."""
    if files != 1:
        return f"{files} files (focal planes, optical paths or concatenations)"
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    if syntax != JPEG_BASELINE:
        return f"transfer syntax {syntax}"
    if int(dataset.get("SamplesPerPixel", 0)) != 3 or int(dataset.get("BitsAllocated", 0)) != 8:
        return "not 8-bit colour"
    if str(dataset.get("PhotometricInterpretation", "")) not in _FAST_PHOTOMETRIC:
        return f"photometric interpretation {dataset.get('PhotometricInterpretation')}"
    if int(dataset.get("TotalPixelMatrixFocalPlanes", 1)) != 1 or int(dataset.get("NumberOfOpticalPaths", 1)) != 1:
        return "several focal planes or optical paths"
    columns = -(-int(dataset.TotalPixelMatrixColumns) // int(dataset.Columns))
    rows = -(-int(dataset.TotalPixelMatrixRows) // int(dataset.Rows))
    frames = int(dataset.get("NumberOfFrames", 1))
    organisation = dataset.get("DimensionOrganizationType")
    if organisation != "TILED_FULL" and not (organisation is None and frames == 1 == columns * rows):
        return f"dimension organisation {organisation}"
    if frames != columns * rows:
        return f"{frames} frames for {columns}x{rows} tiles"
    return None


def _build_table(level: _Level) -> _FrameTable:
    """The frame table of a fast level, from the extended or basic offset table or the items.

    With an offset table, a frame spans from its offset to the next one's (the last to the
    sequence delimiter), so only the table is read; each frame's item headers are checked when it
    is read. Without one, every item header is read once; if there are more items than frames
    (a frame in several fragments), a frame starts at each item that starts a JPEG file.
    """
    blob, frames, dataset = level.blob, level.columns * level.rows, level.dataset
    assert blob is not None
    header = blob.pread(level.pixel_data, _PIXEL_DATA_HEADER + _ITEM_HEADER)
    if header[:4] != _PIXEL_DATA_TAG or header[8:12] != _UNDEFINED_LENGTH or header[12:16] != _ITEM_TAG:
        raise NotDirectFrame("pixel data is not encapsulated as expected")
    (bot_length,) = struct.unpack_from("<I", header, 16)
    first_item = level.pixel_data + _PIXEL_DATA_HEADER + _ITEM_HEADER + bot_length
    offsets = None
    if "ExtendedOffsetTable" in dataset:
        offsets = np.frombuffer(dataset.ExtendedOffsetTable, "<u8").astype(np.int64)
    elif bot_length == 4 * frames:
        offsets = np.frombuffer(blob.pread(level.pixel_data + _PIXEL_DATA_HEADER + _ITEM_HEADER, bot_length),
                                "<u4").astype(np.int64)
    if offsets is not None:
        if len(offsets) != frames or (frames > 1 and (np.diff(offsets) <= _ITEM_HEADER).any()):
            raise NotDirectFrame("the offset table does not list every frame in order")
        positions = offsets + first_item
        last = _items(blob, int(positions[-1]))
        lengths = np.empty(frames, np.int64)
        lengths[:-1] = np.diff(positions)
        lengths[-1] = sum(size for _, size, _ in last)
        return _FrameTable(positions.tolist(), lengths.tolist())
    items = _items(blob, first_item)
    if len(items) == frames:
        return _FrameTable([start for start, _, _ in items], [size for _, size, _ in items])
    if len(items) < frames:
        raise NotDirectFrame(f"{len(items)} fragments for {frames} frames")
    starts: list[int] = []
    sizes: list[int] = []
    for start, size, opens_jpeg in items:
        if opens_jpeg:
            starts.append(start)
            sizes.append(0)
        elif not starts:
            raise NotDirectFrame("the first fragment does not start a JPEG")
        sizes[-1] += size
    if len(starts) != frames:
        raise NotDirectFrame(f"{len(starts)} JPEG frames found in {len(items)} fragments, {frames} expected")
    return _FrameTable(starts, sizes)


def _items(blob: BlobFile, position: int) -> list[tuple[int, int, bool]]:
    """(offset, size with its header, whether its data starts a JPEG) of the items from `position`
    up to the sequence delimiter."""
    items: list[tuple[int, int, bool]] = []
    while True:
        head = blob.pread(position, _ITEM_HEADER + 2)
        if head[:4] == _SEQUENCE_END:
            return items
        if len(head) < _ITEM_HEADER or head[:4] != _ITEM_TAG:
            raise NotDirectFrame(f"neither an item nor the end of the pixel data at byte {position}")
        (length,) = struct.unpack_from("<I", head, 4)
        items.append((position, _ITEM_HEADER + length, head[_ITEM_HEADER : _ITEM_HEADER + 2] == b"\xff\xd8"))
        position += _ITEM_HEADER + length


# --------------------------------------------------------------------------------------------
# The slide


class StoredSlide(OpenSlideVocabulary):
    """A stored slide opened for reading, with OpenSlide's API; thread-safe.

    `blobs` are the opened DICOM files of the slide (plaintext views, e.g. `Node.open_blob`);
    the slide owns them and closes them. `mpp` (µm per level-0 pixel, x and y, or one number)
    overrides the pixel spacing read from the files (ignored altogether with `mpp_from_files=False`);
    without either, no mpp property is set.
    `frame_cache` is where decoded frames are kept (default: the process-wide FRAME_CACHE;
    `FrameCache(0)` keeps none).
    """

    def __init__(
        self,
        blobs: Sequence[BlobFile],
        mpp: tuple[float, float] | float | None = None,
        *,
        mpp_from_files: bool = True,
        frame_cache: FrameCache | None = None,
    ) -> None:
        self._blobs = list(blobs)
        self._cache = FRAME_CACHE if frame_cache is None else frame_cache
        self._token = next(_slide_tokens)
        self._lock = threading.Lock()
        self._wsi: WsiDicom | None = None
        self._wsi_levels: dict[tuple[int, int], int] = {}
        self._closed = False
        try:
            self._levels = self._open_levels()
        except BaseException:
            self.close()
            raise
        base = self._levels[0]
        self.dimensions: tuple[int, int] = (base.width, base.height)
        self.level_count = len(self._levels)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple((lv.width, lv.height) for lv in self._levels)
        self.level_downsamples: tuple[float, ...] = tuple(lv.downsample for lv in self._levels)
        self.level_tile_dimensions: tuple[tuple[int, int], ...] = tuple(
            (lv.tile_width, lv.tile_height) for lv in self._levels
        )
        self.transfer_syntax = base.transfer_syntax
        # Whether every level's frames are baseline JPEG files (browsers take them as they are).
        self.stored_jpeg = all(lv.transfer_syntax == JPEG_BASELINE for lv in self._levels)
        if isinstance(mpp, (int, float)):
            mpp = (float(mpp), float(mpp))
        # A slide stored with its pixel size unknown carries a nominal spacing (DICOM requires one):
        # `mpp_from_files=False` keeps that nominal value out of everything this reader tells.
        file_mpp = _pixel_spacing_mpp(base.dataset) if mpp_from_files else None
        self.mpp: tuple[float, float] | None = mpp if mpp is not None else file_mpp
        self.properties: dict[str, str] = self._properties(base.dataset)
        self.associated_images: dict[str, Image.Image] = {}  # labels and macros are not stored

    # -- opening ---------------------------------------------------------------------------

    def _open_levels(self) -> list[_Level]:
        volumes: dict[tuple[int, int], list[tuple[pydicom.Dataset, BlobFile, int]]] = {}
        for blob in self._blobs:
            with blob.stream() as handle:
                dataset = pydicom.dcmread(handle, stop_before_pixels=True)
                pixel_data = handle.tell()
            image_type = [str(value) for value in dataset.get("ImageType", [])]
            if len(image_type) < 3 or image_type[2] != "VOLUME" or "TotalPixelMatrixColumns" not in dataset:
                continue  # labels, overviews, thumbnails: not part of the pyramid
            size = (int(dataset.TotalPixelMatrixColumns), int(dataset.TotalPixelMatrixRows))
            volumes.setdefault(size, []).append((dataset, blob, pixel_data))
        if not volumes:
            raise StoredSlideError("no DICOM VOLUME image among the stored files")
        ordered = sorted(volumes.items(), key=lambda item: (-item[0][0], -item[0][1]))
        base = ordered[0][0]
        levels = []
        for index, (_, instances) in enumerate(ordered):
            first, first_blob, pixel_data = instances[0]
            why = _why_slow(first, len(instances))
            levels.append(_Level(index, first, first_blob if len(instances) == 1 else None, pixel_data, base, why))
        return levels

    def _properties(self, dataset: pydicom.Dataset) -> dict[str, str]:
        properties = {PROPERTY_NAME_VENDOR: VENDOR, PROPERTY_NAME_LEVEL_COUNT: str(self.level_count)}
        if self.mpp is not None:
            properties[PROPERTY_NAME_MPP_X] = repr(float(self.mpp[0]))
            properties[PROPERTY_NAME_MPP_Y] = repr(float(self.mpp[1]))
        power = _objective_power(dataset)
        if power is not None:
            properties[PROPERTY_NAME_OBJECTIVE_POWER] = f"{power:g}"
        for index, level in enumerate(self._levels):
            prefix = f"openslide.level[{index}]"
            properties[f"{prefix}.width"] = str(level.width)
            properties[f"{prefix}.height"] = str(level.height)
            properties[f"{prefix}.downsample"] = repr(level.downsample)
            properties[f"{prefix}.tile-width"] = str(level.tile_width)
            properties[f"{prefix}.tile-height"] = str(level.tile_height)
        properties["slidebank.transfer-syntax"] = self.transfer_syntax
        return properties

    # -- OpenSlide API ---------------------------------------------------------------------

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int], *, as_array: bool = False
    ) -> Image.Image | np.ndarray:
        """An RGBA image of `size` at `level`, its corner at level-0 `location`, as OpenSlide.

        Outside the slide the pixels are transparent (0, 0, 0, 0). With `as_array=True` (as
        tiffslide) the result is `read_region_array`'s: an RGB array, black outside.
        """
        if as_array:
            return self.read_region_array(location, level, size)
        x, y, width, height = self._level_region(location, level, size)
        if not width or not height:
            return Image.new("RGBA", (width, height))
        pixels = self._read(level, x, y, width, height, 4, None)
        return Image.frombuffer("RGBA", (width, height), pixels, "raw", "RGBA", 0, 1)

    def read_region_array(
        self, location: tuple[int, int], level: int, size: tuple[int, int], *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """`read_region` as an (height, width, 3) uint8 RGB array (black outside the slide).

        `out` (same shape and dtype, e.g. one slot of a batch) is filled and returned instead of
        a new array.
        """
        x, y, width, height = self._level_region(location, level, size)
        return self._read(level, x, y, width, height, 3, out)

    def read_level_array(
        self, level: int, location: tuple[int, int], size: tuple[int, int], *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Like `read_region_array`, with `location` in the level's own pixels (as wsidicom)."""
        width, height = region_size(size)
        return self._read(level, int(location[0]), int(location[1]), width, height, 3, out)

    # -- tiles, for tile servers -------------------------------------------------------------

    def tile_grid(self, level: int) -> tuple[int, int]:
        """(columns, rows) of stored tiles at `level`."""
        stored = self._level(level)
        return stored.columns, stored.rows

    def read_encoded_tile(self, level: int, column: int, row: int, *, crop_to_level: bool = True) -> bytes:
        """A stored tile's encoded bytes, as stored (a complete JPEG for JPEG slides).

        Edge tiles reach past the level; with `crop_to_level` they are cut to it, for JPEG in the
        DCT domain (libjpeg-turbo's lossless crop: no re-encoding, unlike wsidicom's; decoders
        then upsample the chroma of the last row and column without the samples beyond the cut,
        a difference of a few levels there). Other syntaxes are cut by wsidicom.
        """
        stored = self._level(level)
        self._check_tile(stored, column, row)
        if stored.fast:
            try:
                data = self._encoded_frame(stored, row * stored.columns + column)
                width = min(stored.tile_width, stored.width - column * stored.tile_width)
                height = min(stored.tile_height, stored.height - row * stored.tile_height)
                if crop_to_level and (width, height) != (stored.tile_width, stored.tile_height):
                    return _lossless_crop(bytes(data), width, height)
                return bytes(data)
            except NotDirectFrame as reason:
                self._demote(stored, str(reason))
        wsi = self._wsidicom()
        return wsi.read_encoded_tile(
            self._wsi_level(stored), (column, row), crop_to_image_boundary=crop_to_level
        )

    def read_tile(self, level: int, column: int, row: int) -> np.ndarray:
        """A stored tile's pixels, RGB, cut to the level at the right and bottom edges."""
        stored = self._level(level)
        self._check_tile(stored, column, row)
        x, y = column * stored.tile_width, row * stored.tile_height
        width, height = min(stored.tile_width, stored.width - x), min(stored.tile_height, stored.height - y)
        return self._read(level, x, y, width, height, 3, None)

    def frame_encoding(self, level: int) -> FrameEncoding:
        """How the stored frames of `level` are encoded: what a remote reader needs to decode them."""
        stored = self._level(level)
        dataset = stored.dataset
        return FrameEncoding(
            transfer_syntax=stored.transfer_syntax,
            photometric=str(dataset.get("PhotometricInterpretation", "RGB")),
            samples_per_pixel=int(dataset.get("SamplesPerPixel", 3)),
            bits_stored=int(dataset.get("BitsStored", 8)),
            tile_width=stored.tile_width,
            tile_height=stored.tile_height,
        )

    def level_of_instance(self, sop_instance_uid: str) -> int | None:
        """The level stored whole in the DICOM instance with this UID (frame n is then tile n-1 of
        the level, row by row); None if no level is that one file (focal planes, concatenations)."""
        for level in self._levels:
            if level.blob is not None and str(level.dataset.get("SOPInstanceUID", "")) == sop_instance_uid:
                return level.index
        return None

    def frames_indexed(self, level: int) -> bool:
        """Whether a level's frames can be read without first walking its file (a fast level whose
        frame table is built): what an event loop may do without stalling."""
        stored = self._level(level)
        return stored.fast and stored.table is not None

    @property
    def fast_levels(self) -> tuple[bool, ...]:
        """Per level, whether its regions are read directly (True) or through wsidicom."""
        return tuple(level.fast for level in self._levels)

    # -- life cycle --------------------------------------------------------------------------

    def close(self, *, forget: bool = False) -> None:
        """Close the files; later reads raise ValueError. Closing twice is harmless. With `forget`
        (the slide was erased), decrypted data of its files leaves this process's caches too."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            wsi, self._wsi = self._wsi, None
        if wsi is not None:
            wsi.close()
        for blob in self._blobs:
            forget_blob = getattr(blob, "forget", None) if forget else None
            forget_blob() if forget_blob is not None else blob.close()
        self._cache.discard(self._token)

    def __enter__(self) -> StoredSlide:
        return self

    def __del__(self) -> None:  # a slide dropped from a cache while a reader still used it closes last
        if not getattr(self, "_closed", True):
            self.close()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        width, height = getattr(self, "dimensions", (0, 0))
        return f"StoredSlide({width}x{height}, {getattr(self, 'level_count', 0)} levels)"

    # -- reading -----------------------------------------------------------------------------

    def _level(self, level: int) -> _Level:
        if self._closed:
            raise ValueError("read from a closed StoredSlide")
        if not 0 <= level < len(self._levels):
            raise IndexError(f"level {level} out of range (the slide has {len(self._levels)})")
        return self._levels[level]

    def _check_level(self, level: int) -> None:
        self._level(level)  # closed, or out of range

    @staticmethod
    def _check_tile(level: _Level, column: int, row: int) -> None:
        if not (0 <= column < level.columns and 0 <= row < level.rows):
            raise IndexError(f"tile ({column}, {row}) is outside the {level.columns}x{level.rows} tiles "
                             f"of level {level.index}")

    def _read(self, level: int, x: int, y: int, width: int, height: int, channels: int,
              out: np.ndarray | None) -> np.ndarray:
        """Pixels [x, x + width) x [y, y + height) of a level (its own coordinates)."""
        stored = self._level(level)
        left, top = max(x, 0), max(y, 0)
        right, bottom = min(x + width, stored.width), min(y + height, stored.height)
        inside = left == x and top == y and right == x + width and bottom == y + height
        if out is None:
            out = (np.empty if inside else np.zeros)((height, width, channels), np.uint8)
        else:
            if out.shape != (height, width, channels) or out.dtype != np.uint8:
                raise ValueError(f"out must be a ({height}, {width}, {channels}) uint8 array, "
                                 f"not {out.shape} {out.dtype}")
            if not inside:
                out.fill(0)
        if left >= right or top >= bottom:
            return out
        if stored.fast:
            try:
                self._read_frames(stored, x, y, left, top, right, bottom, out)
                return out
            except NotDirectFrame as reason:
                self._demote(stored, str(reason))
        self._read_wsidicom(stored, x, y, left, top, right, bottom, out)
        return out

    def _read_frames(self, level: _Level, x: int, y: int, left: int, top: int, right: int, bottom: int,
                     out: np.ndarray) -> None:
        tile_width, tile_height = level.tile_width, level.tile_height
        channels = out.shape[2]
        direct = out.strides[1] == channels and out.strides[2] == 1  # rows of pixels, packed
        for row in range(top // tile_height, (bottom - 1) // tile_height + 1):
            frame_top = row * tile_height
            y0, y1 = max(top, frame_top) - frame_top, min(bottom, frame_top + tile_height) - frame_top
            for column in range(left // tile_width, (right - 1) // tile_width + 1):
                frame_left = column * tile_width
                x0, x1 = max(left, frame_left) - frame_left, min(right, frame_left + tile_width) - frame_left
                target = out[frame_top + y0 - y : frame_top + y1 - y, frame_left + x0 - x : frame_left + x1 - x]
                index = row * level.columns + column
                key = (self._token, level.index, index, channels)
                cached = self._cache.get(key)
                if cached is not None and cached.shape[0] >= y1:
                    target[...] = cached[y0:y1, x0:x1]
                elif direct and (x0, y0, x1, y1) == (0, 0, tile_width, tile_height):
                    # The whole frame lies in the region: decode straight into it, and keep it
                    # out of the cache (grid walks rarely come back to a tile).
                    self._decode(level, index, tile_height, channels, target)
                else:
                    frame = self._decode(level, index, y1, channels, None)
                    frame.setflags(write=False)
                    self._cache.put(key, frame)
                    target[...] = frame[y0:y1, x0:x1]

    def _decode(self, level: _Level, index: int, rows: int, channels: int, out: np.ndarray | None) -> np.ndarray:
        """At least the top `rows` rows of frame `index`, decoded (see `decode_jpeg_frame`)."""
        return decode_jpeg_frame(self._encoded_frame(level, index), level.tile_width, level.tile_height, rows,
                                 channels, out)

    def _encoded_frame(self, level: _Level, index: int) -> memoryview:
        """The JPEG bytes of a frame (one positioned read), checked against its item headers."""
        table = level.table
        if table is None:
            with self._lock:
                if level.table is None:
                    level.table = _build_table(level)
                table = level.table
        assert level.blob is not None
        return table.read(level.blob, index)

    def _demote(self, level: _Level, reason: str) -> None:
        """Send a level through wsidicom from now on (its layout was not the simple one)."""
        level.fast = False
        level.why_slow = reason

    # -- wsidicom, for every other layout ----------------------------------------------------

    def _wsidicom(self) -> WsiDicom:
        with self._lock:
            if self._closed:
                raise ValueError("read from a closed StoredSlide")
            if self._wsi is None:
                from wsidicom import WsiDicom

                self._wsi = WsiDicom.open_streams([blob.stream() for blob in self._blobs])
                self._wsi_levels = {(lv.size.width, lv.size.height): lv.level for lv in self._wsi.levels}
            return self._wsi

    def _wsi_level(self, level: _Level) -> int:
        self._wsidicom()
        try:
            return self._wsi_levels[(level.width, level.height)]
        except KeyError:
            raise StoredSlideError(
                f"wsidicom does not see level {level.index} ({level.width}x{level.height})"
            ) from None

    def _read_wsidicom(self, level: _Level, x: int, y: int, left: int, top: int, right: int, bottom: int,
                       out: np.ndarray) -> None:
        wsi = self._wsidicom()
        image = wsi.read_region((left, top), self._wsi_level(level), (right - left, bottom - top))
        pixels = as_rgb(image, int(level.dataset.get("BitsStored", 8)))
        target = out[top - y : bottom - y, left - x : right - x]
        if out.shape[2] == 4:
            target[..., :3] = pixels
            target[..., 3] = 255
        else:
            target[...] = pixels


# --------------------------------------------------------------------------------------------
# Helpers


_transformer: Any = None


def _lossless_crop(jpeg: bytes, width: int, height: int) -> bytes:
    """The top-left `width` x `height` of a JPEG, cut in the DCT domain (libjpeg-turbo transform).

    PyTurboJPEG makes a transform handle per call, so one instance serves every thread.
    """
    global _transformer
    if _transformer is None:
        from turbojpeg import TurboJPEG

        _transformer = TurboJPEG(_turbojpeg_path())
    return bytes(_transformer.crop(jpeg, 0, 0, width, height))


def as_rgb(image: Image.Image, bits_stored: int) -> np.ndarray:
    """A wsidicom region as 8-bit RGB: grey replicated, 16-bit grey scaled to its top 8 bits."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L") or bits_stored > 8:
        grey = np.asarray(image).astype(np.int64) >> max(bits_stored - 8, 0)
        grey = np.clip(grey, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey[..., :3]
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _pixel_spacing_mpp(dataset: pydicom.Dataset) -> tuple[float, float] | None:
    """µm per pixel (x, y) from the shared functional groups' Pixel Spacing (row, column mm)."""
    try:
        spacing = dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        row_mm, column_mm = float(spacing[0]), float(spacing[1])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    if row_mm <= 0 or column_mm <= 0:
        return None
    return column_mm * 1000, row_mm * 1000


def _objective_power(dataset: pydicom.Dataset) -> float | None:
    try:
        value: Any = dataset.OpticalPathSequence[0].ObjectiveLensPower
        return float(value) if value not in (None, "") else None
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
