"""WADO-RS and QIDO-RS over the stored canonical files, for the HTTP front (`api/dicomweb.py`).

Instances are found through the catalog's index of their UIDs, among the datasets the caller may
read (an instance of another dataset is "not found", as a slide is). Frames of an instance that
holds a whole pyramid level are the same positioned reads as tiles, from the slide opened by the
tile service; other instances' frames are read through pydicom from the decrypted stream.
Rendering reads the pyramid level that best fits the viewport, so no answer decodes more than a few
times the pixels it returns. Who read what is audited by the caller (the route), as for tiles.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
from cachetools import LRUCache
from PIL import Image
from pydicom.encaps import get_frame
from sqlalchemy import false, select

from slidebank.access.errors import SlideNotFound
from slidebank.catalog import Catalog
from slidebank.catalog.records import StoredFile
from slidebank.db.models import Dataset, DicomInstance, ImageFile
from slidebank.db.models import Image as ImageRow
from slidebank.dicomweb import search as qido
from slidebank.slides.frames import MEDIA_TYPES, FrameDecoder, FrameEncoding
from slidebank.slides.reader import StoredSlide
from slidebank.slides.stored import OpenBlob, read_whole
from slidebank.tiles.service import TileService

CHUNK = 1024 * 1024
BULK_DATA_THRESHOLD = 512  # binary values longer than this are sent as BulkDataURI
KNOWN_INSTANCES = 65536
MAX_RENDERED_PIXELS = 2048 * 2048  # the largest rendered answer: the level read for it is at most 4x that
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


class NotRenderable(ValueError):
    """A rendering larger than MAX_RENDERED_PIXELS was asked for (400): a smaller viewport is needed."""


@dataclass(frozen=True)
class StoredInstance:
    slide_id: str
    dataset: str
    file: StoredFile
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    number_of_frames: int
    rows: int
    columns: int
    width: int  # total pixel matrix (the frame itself for a single-frame image)
    height: int
    samples_per_pixel: int
    bits_allocated: int
    photometric: str

    @property
    def media_type(self) -> str:
        """The media type of one stored frame."""
        return MEDIA_TYPES.get(self.transfer_syntax, "application/octet-stream")

    @property
    def encoding(self) -> FrameEncoding:
        return FrameEncoding(self.transfer_syntax, self.photometric, self.samples_per_pixel, self.bits_allocated,
                             self.columns, self.rows)


class DicomWeb:
    def __init__(self, catalog: Catalog, tiles: TileService, open_blob: OpenBlob) -> None:
        self._catalog = catalog
        self._uow = catalog.uow
        self._tiles = tiles
        self._open_blob = open_blob
        # Instances looked up lately, by SOP Instance UID, for the pixel fast path (`api/fastpath.py`).
        # UIDs never change meaning; whether the caller may read (or the slide still exists) is asked
        # of the gatekeeper on every request, never of this cache.
        self._known: LRUCache[str, StoredInstance] = LRUCache(KNOWN_INSTANCES)
        self._lock = threading.Lock()

    # --- QIDO-RS ----------------------------------------------------------------------------------

    def search(self, query: qido.Query, readable: frozenset[str] | None) -> qido.Answer:
        with self._uow.read() as session:
            return qido.search(session, query, readable)

    # --- finding instances ------------------------------------------------------------------------

    def instances(self, readable: frozenset[str] | None, study: str, series: str | None = None,
                  sop: str | None = None) -> list[StoredInstance]:
        """The readable instances of a study, series or one instance; SlideNotFound (404) if none."""
        statement = (
            select(DicomInstance, ImageFile, ImageRow.slide_id, Dataset.alias)
            .join(ImageFile, ImageFile.id == DicomInstance.file_id)
            .join(ImageRow, ImageRow.id == DicomInstance.image_id)
            .join(Dataset, Dataset.id == ImageRow.dataset_id)
            .where(DicomInstance.study_uid == study)
            .order_by(DicomInstance.series_uid, DicomInstance.instance_number, DicomInstance.sop_instance_uid)
        )
        if series is not None:
            statement = statement.where(DicomInstance.series_uid == series)
        if sop is not None:
            statement = statement.where(DicomInstance.sop_instance_uid == sop)
        if readable is not None:
            statement = statement.where(Dataset.alias.in_(sorted(readable)) if readable else false())
        with self._uow.read() as session:
            rows = session.execute(statement).all()
        if not rows:
            raise SlideNotFound("no such study, series or instance")
        found = [StoredInstance(
            slide_id=slide_id, dataset=dataset,
            file=StoredFile(file.role, file.sha256, file.size, file.level, file.media_type, file.key_header),
            study_uid=row.study_uid, series_uid=row.series_uid, sop_instance_uid=row.sop_instance_uid,
            sop_class_uid=row.sop_class_uid, transfer_syntax=row.transfer_syntax,
            number_of_frames=row.number_of_frames, rows=row.rows, columns=row.columns,
            width=row.total_pixel_matrix_columns or row.columns, height=row.total_pixel_matrix_rows or row.rows,
            samples_per_pixel=row.samples_per_pixel, bits_allocated=row.bits_allocated,
            photometric=row.photometric_interpretation,
        ) for row, file, slide_id, dataset in rows]
        with self._lock:
            for instance in found:
                self._known[instance.sop_instance_uid] = instance
        return found

    def series_of(self, slide_id: str) -> tuple[str, str] | None:
        """(study, series) UIDs of a stored slide's canonical instances."""
        with self._uow.read() as session:
            row = session.execute(
                select(DicomInstance.study_uid, DicomInstance.series_uid)
                .join(ImageRow, ImageRow.id == DicomInstance.image_id).where(ImageRow.slide_id == slide_id).limit(1)
            ).first()
        return (row[0], row[1]) if row else None

    def known(self, sop_instance_uid: str) -> StoredInstance | None:
        """An instance found by an earlier request in this process (the fast path's lookup), else None."""
        with self._lock:
            return self._known.get(sop_instance_uid)

    def open_level(self, instance: StoredInstance) -> tuple[StoredSlide, int] | None:
        """The already-open slide and level whose frames are this instance's, if both are ready for an
        event loop (the slide open, the level's frame table built); None otherwise."""
        pyramid = self._tiles.open_pyramid(instance.slide_id)
        if pyramid is None:
            return None
        level = pyramid.slide.level_of_instance(instance.sop_instance_uid)
        if level is None or not pyramid.slide.frames_indexed(level):
            return None
        return pyramid.slide, level

    # --- whole instances and their metadata -------------------------------------------------------

    def stream(self, instance: StoredInstance) -> Iterator[bytes]:
        """The stored file, decrypted, in chunks (the blob is closed when the iteration ends)."""
        blob = self._open_blob(instance.file)
        try:
            with blob.stream() as handle:
                while chunk := handle.read(CHUNK):
                    yield chunk
        finally:
            blob.close()

    def header(self, instance: StoredInstance) -> pydicom.Dataset:
        blob = self._open_blob(instance.file)
        try:
            with blob.stream() as handle:
                return pydicom.dcmread(handle, stop_before_pixels=True)
        finally:
            blob.close()

    def metadata(self, instance: StoredInstance, bulkdata_base: str) -> dict[str, object]:
        """The instance's attributes as DICOM JSON; binary values over BULK_DATA_THRESHOLD bytes as a
        BulkDataURI under `bulkdata_base` (the path of the element: tags and item indices)."""
        dataset = self.header(instance)
        paths = {id(element): path for path, element in _binary_elements(dataset, "")}

        def uri(element: pydicom.DataElement) -> str:
            return f"{bulkdata_base}/{paths[id(element)]}"

        return dataset.to_json_dict(bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=uri)

    def bulkdata(self, instance: StoredInstance, path: str) -> bytes:
        """The value of the binary element at `path` (as `metadata` names it); KeyError if none."""
        for found, element in _binary_elements(self.header(instance), ""):
            if found == path:
                value = element.value
                return bytes(value) if value is not None else b""
        raise KeyError(path)

    # --- frames -----------------------------------------------------------------------------------

    def frames(self, instance: StoredInstance, numbers: list[int]) -> list[bytes]:
        """Stored frames (1-based numbers), as stored; IndexError for a number outside the instance."""
        for number in numbers:
            if not 1 <= number <= instance.number_of_frames:
                raise IndexError(f"frame {number} is not in the instance (it has {instance.number_of_frames})")
        placed = self._level_of(instance)
        if placed is not None:
            return frames_of_level(*placed, numbers)
        return self._frames_through_pydicom(instance, numbers)

    def _level_of(self, instance: StoredInstance) -> tuple[StoredSlide, int] | None:
        slide = self._tiles.pyramid(instance.slide_id).slide
        level = slide.level_of_instance(instance.sop_instance_uid)
        return None if level is None else (slide, level)

    def _frames_through_pydicom(self, instance: StoredInstance, numbers: list[int]) -> list[bytes]:
        blob = self._open_blob(instance.file)
        try:
            with blob.stream() as handle:
                dataset = pydicom.dcmread(handle, stop_before_pixels=True)
                handle.seek(handle.tell() + 12)  # (7FE0,0010), VR, reserved, undefined length
                offsets = (dataset.ExtendedOffsetTable, dataset.ExtendedOffsetTableLengths) \
                    if "ExtendedOffsetTable" in dataset else None
                return [get_frame(handle, n - 1, extended_offsets=offsets, number_of_frames=instance.number_of_frames)
                        for n in numbers]
        finally:
            blob.close()

    # --- rendered images --------------------------------------------------------------------------

    def rendered(self, instance: StoredInstance, viewport: tuple[int, int] | None,
                 frame: int | None = None) -> Image.Image:
        """The instance (or one frame) as an RGB image, scaled to fit `viewport` (aspect kept)."""
        if frame is not None:
            [data] = self.frames(instance, [frame])
            image = Image.fromarray(FrameDecoder(instance.encoding).decode(data))
            return _fit(image, viewport)
        width, height = instance.width, instance.height
        target = _fitted_size(width, height, viewport)
        if target[0] * target[1] > MAX_RENDERED_PIXELS:
            raise NotRenderable(f"the instance is {width}x{height} pixels and {target[0]}x{target[1]} were asked: "
                                f"ask for a viewport of at most {MAX_RENDERED_PIXELS} pixels")
        placed = self._level_of(instance)
        if placed is None:
            if instance.number_of_frames != 1:
                raise NotRenderable("only instances holding a whole pyramid level or one frame are rendered")
            return self.rendered(instance, viewport, frame=1)
        slide, level = placed
        # The smallest stored level at least as large as the answer: a few times its pixels at most.
        source = level
        while (source + 1 < slide.level_count and slide.level_dimensions[source + 1][0] >= target[0]
               and slide.level_dimensions[source + 1][1] >= target[1]):
            source += 1
        source_width, source_height = slide.level_dimensions[source]
        pixels = slide.read_level_array(source, (0, 0), (source_width, source_height))
        image = Image.fromarray(pixels)
        return image if image.size == target else image.resize(target, Image.Resampling.LANCZOS)

    def thumbnail(self, slide_id: str, viewport: tuple[int, int] | None) -> Image.Image:
        """The slide's stored thumbnail, fitted to `viewport`."""
        stored = next((f for f in self._catalog.stored_files(slide_id) if f.role == "thumbnail"), None)
        if stored is None:
            raise SlideNotFound("no thumbnail")
        with Image.open(io.BytesIO(read_whole(stored, self._open_blob))) as image:
            return _fit(image.convert("RGB"), viewport)


def frames_of_level(slide: StoredSlide, level: int, numbers: list[int]) -> list[bytes]:
    """Frames (1-based, row by row) of an instance that holds a whole level, as stored."""
    columns, _ = slide.tile_grid(level)
    return [slide.read_encoded_tile(level, (n - 1) % columns, (n - 1) // columns, crop_to_level=False)
            for n in numbers]


def _binary_elements(dataset: pydicom.Dataset, prefix: str) -> Iterator[tuple[str, pydicom.DataElement]]:
    """(path, element) of every binary element over the threshold, sequences included: a path is
    `TAG` or `TAG/ITEM/TAG…` (8 hex digits per tag, items from 0)."""
    for element in dataset:
        tag = f"{prefix}{int(element.tag):08X}"
        if element.VR == "SQ":
            for index, item in enumerate(element.value or []):
                yield from _binary_elements(item, f"{tag}/{index}/")
        elif element.VR in _BINARY_VRS and element.value is not None and len(element.value) > BULK_DATA_THRESHOLD:
            yield tag, element


def _fitted_size(width: int, height: int, viewport: tuple[int, int] | None) -> tuple[int, int]:
    if viewport is None:
        return width, height
    scale = min(viewport[0] / width, viewport[1] / height, 1.0)  # fitted, never enlarged
    return max(1, round(width * scale)), max(1, round(height * scale))


def _fit(image: Image.Image, viewport: tuple[int, int] | None) -> Image.Image:
    target = _fitted_size(image.width, image.height, viewport)
    return image if target == image.size else image.resize(target, Image.Resampling.LANCZOS)


def as_encoded(image: Image.Image, media_type: str, quality: int = 90) -> bytes:
    """A rendered image as JPEG or PNG bytes."""
    buffer = io.BytesIO()
    if media_type == "image/png":
        image.save(buffer, "PNG")
    else:
        image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()

