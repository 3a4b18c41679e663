"""Tiny slides of the modalities a brightfield RGB pipeline does not expect.

Why: Slidebank's ingest was built around 8-bit RGB brightfield slides (SVS, generic TIFF, DICOM WSI
from brightfield scanners). Real collections also hold grey-scale brightfield, 16-bit and
multi-channel fluorescence, and Aperio files that are JPEG 2000 compressed or carry no pixel size.
These generators write the smallest files that real readers (OpenSlide, wsidicom, wsidicomizer,
tifffile, pydicom) recognise as such, in well under a second, so tests can pin down what ingest
does with each of them instead of discovering it on a pathologist's archive.

Every pixel value is a deterministic function of its level-0 position (see `grey_pattern`,
`channel_pattern`), so a test can compare what was stored with what was written and tell a
lossless copy from an 8-bit or lossy re-encoding. Lower pyramid levels are 2×2 box means.

Only numpy, pydicom, tifffile and imagecodecs are used (all Slidebank dependencies). highdicom
cannot author VL Whole Slide Microscopy images (it writes derived objects: SEG, PM, SC, ANN...),
so the DICOM instances are built attribute by attribute with pydicom, following PS3.3 A.32.8.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import imagecodecs
import numpy as np
import tifffile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, VLWholeSlideMicroscopyImageStorage, generate_uid

__all__ = [
    "FLUORESCENCE_CHANNELS",
    "Channel",
    "box_pyramid",
    "channel_pattern",
    "grey_pattern",
    "rgb_pattern",
    "write_aperio_j2k_svs",
    "write_aperio_jpeg_svs",
    "write_aperio_jpeg_svs_without_mpp",
    "write_dicom_wsi",
    "write_grey8_dicom",
    "write_grey16_tiff",
    "write_hanging_dicom",
    "write_multichannel_dicom",
    "write_multichannel_ome_tiff",
]

APERIO_LIBRARY = "Aperio Image Library v12.0.15"
# Aperio's private TIFF compression codes for JPEG 2000 tiles (what OpenSlide decodes).
APERIO_J2K_YCBCR = 33003
APERIO_J2K_RGB = 33005


@dataclass(frozen=True)
class Channel:
    """One fluorescence channel: its name, excitation/emission wavelengths (nm) and display colour."""

    name: str
    excitation_nm: float
    emission_nm: float
    color: tuple[int, int, int]  # false colour a viewer should use, 8-bit sRGB


# The usual 4-plex of a multiplex immunofluorescence panel.
FLUORESCENCE_CHANNELS: tuple[Channel, ...] = (
    Channel("DAPI", 358.0, 461.0, (0, 0, 255)),
    Channel("FITC", 495.0, 519.0, (0, 255, 0)),
    Channel("Cy3", 550.0, 570.0, (255, 255, 0)),
    Channel("Cy5", 650.0, 670.0, (255, 0, 0)),
    Channel("Cy7", 750.0, 773.0, (255, 0, 255)),
)


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------


def grey_pattern(width: int, height: int, bits: Literal[8, 16] = 16, seed: int = 0) -> np.ndarray:
    """Level-0 grey pixels: a diagonal ramp over the whole range plus fine deterministic noise.

    The ramp reaches values above 255 and above 4095 (for 16 bits), so a reader that keeps only
    the low byte, or that clips to 8 bits, or that scales as if the data were 12-bit, shows it.
    The noise makes neighbouring pixels differ, so lossy coding or resampling is detectable.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    top = (1 << bits) - 1
    ramp = (x + y) / max(1, width + height - 2) * (top * 0.9)
    noise = rng.integers(0, max(2, top // 20), size=(height, width))
    return np.clip(ramp + noise, 0, top).astype(np.uint8 if bits == 8 else np.uint16)


def channel_pattern(channels: int, width: int, height: int, bits: Literal[8, 16] = 16, seed: int = 0) -> np.ndarray:
    """Level-0 fluorescence pixels (C, Y, X): dark background and bright round 'nuclei' per channel.

    Each channel has its own spot positions and peak level (decreasing with the channel index), as
    in a real multiplex panel where DAPI is brightest; background stays a few percent of the range.
    """
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((channels, height, width), dtype=np.uint8 if bits == 8 else np.uint16)
    for c in range(channels):
        peak = top * (0.95 - 0.15 * c)
        image = rng.uniform(0.01, 0.04, size=(height, width)).astype(np.float32) * top
        for _ in range(6):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            radius = rng.uniform(3.0, 8.0)
            image += peak * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        out[c] = np.clip(image, 0, top).astype(out.dtype)
    return out


def box_pyramid(level0: np.ndarray, levels: int) -> list[np.ndarray]:
    """`levels` power-of-two levels of a (..., Y, X) or (Y, X, S) array: 2×2 box means, sizes rounded up."""
    spatial_last = level0.ndim == 2 or level0.shape[-1] not in (3, 4)  # (Y, X) or (C, Y, X)
    pyramid = [level0]
    for _ in range(1, levels):
        previous = pyramid[-1]
        if not spatial_last:  # (Y, X, S) -> move samples first
            previous = np.moveaxis(previous, -1, 0)
        h, w = previous.shape[-2:]
        padded = np.pad(
            previous.astype(np.float64),
            [(0, 0)] * (previous.ndim - 2) + [(0, h % 2), (0, w % 2)],
            mode="edge",
        )
        reduced = (padded[..., 0::2, 0::2] + padded[..., 1::2, 0::2] + padded[..., 0::2, 1::2]
                   + padded[..., 1::2, 1::2]) / 4
        reduced = np.rint(reduced).astype(level0.dtype)
        pyramid.append(reduced if spatial_last else np.moveaxis(reduced, 0, -1))
    return pyramid


# --------------------------------------------------------------------------------------------
# DICOM WSI
# --------------------------------------------------------------------------------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _palette(color: tuple[int, int, int], bits: int) -> Dataset:
    """A segmented palette LUT ramping from black to `color`: how DICOM carries a channel's false colour."""
    entries = 1 << bits
    item = Dataset()
    for name, component in zip(("Red", "Green", "Blue"), color, strict=True):
        end = component * 257  # 8-bit colour to 16-bit LUT values
        descriptor = (0 if entries == 65536 else entries, 0, 16)
        item.add_new(f"{name}PaletteColorLookupTableDescriptor", "US", list(descriptor))
        # Segment opcodes (PS3.3 C.7.9.2): discrete [0, n, v...], linear [1, n, end].
        segments = struct.pack("<6H", 0, 1, 0, 1, entries - 1, end)
        item.add_new(f"Segmented{name}PaletteColorLookupTableData", "OW", segments)
    return item


def _optical_path(identifier: str, channel: Channel | None, bits: int) -> Dataset:
    path = Dataset()
    path.OpticalPathIdentifier = identifier
    if channel is None:
        path.OpticalPathDescription = "Brightfield, monochrome camera"
        path.IlluminationTypeCodeSequence = [_code("111744", "DCM", "Brightfield illumination")]
        path.IlluminationColorCodeSequence = [_code("414298005", "SCT", "Full Spectrum")]
        return path
    path.OpticalPathDescription = f"{channel.name} (ex {channel.excitation_nm:g} nm, em {channel.emission_nm:g} nm)"
    path.IlluminationTypeCodeSequence = [_code("111743", "DCM", "Epifluorescence illumination")]
    path.IlluminationWaveLength = channel.excitation_nm
    path.LightPathFilterPassThroughWavelength = int(channel.emission_nm)
    path.PaletteColorLookupTableSequence = [_palette(channel.color, bits)]
    return path


def _tiles(plane: np.ndarray, tile: int) -> list[np.ndarray]:
    """Row-major tiles of a (Y, X[, S]) plane, edge tiles padded with zeros to the full tile size."""
    height, width = plane.shape[:2]
    tiles = []
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            block = np.zeros((tile, tile, *plane.shape[2:]), dtype=plane.dtype)
            part = plane[y:y + tile, x:x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            tiles.append(block)
    return tiles


def write_dicom_wsi(
    folder: Path,
    levels: Sequence[np.ndarray],
    *,
    tile: int,
    mpp: float = 0.5,
    channels: Sequence[Channel] | None = None,
    name: str = "slide",
) -> list[Path]:
    """Write one uncompressed (explicit VR little endian) VL WSI instance per pyramid level.

    `levels` hold (Y, X) grey or (C, Y, X) multi-channel arrays of uint8/uint16; channel c becomes
    optical path c (frames ordered column, row, focal plane, optical path, as TILED_FULL requires).
    Shared study, series and frame of reference; empty type-2 patient and study attributes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference, dimension = (generate_uid() for _ in range(4))
    base = levels[0]
    base_height, base_width = base.shape[-2:]
    bits = 8 if base.dtype == np.uint8 else 16
    multi = base.ndim == 3
    if multi and (channels is None or len(channels) != base.shape[0]):
        raise ValueError("a (C, Y, X) array needs one Channel per plane")
    paths: list[Path] = []
    for index, pixels in enumerate(levels):
        planes = list(pixels) if multi else [pixels]
        height, width = pixels.shape[-2:]
        scale = base_width / width
        spacing_mm = mpp * scale / 1000
        frames = [t for plane in planes for t in _tiles(plane, tile)]

        ds = Dataset()
        ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.Modality = "SM"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if index == 0 else [
            "DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        # Patient and study (type 2: present, empty), equipment and series.
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber", "ContentDate", "ContentTime"):
            setattr(ds, keyword, "")
        ds.AcquisitionDateTime = ""
        ds.Manufacturer = "Slidebank synthetic"
        ds.ManufacturerModelName = "modalities"
        ds.DeviceSerialNumber = "0"
        ds.SoftwareVersions = "slidebank.synth.modalities"
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.PositionReferenceIndicator = "SLIDE_CORNER"
        ds.VolumetricProperties = "VOLUME"
        ds.BurnedInAnnotation = "NO"
        ds.SpecimenLabelInImage = "NO"
        ds.FocusMethod = "AUTO"
        ds.ExtendedDepthOfField = "NO"
        ds.LossyImageCompression = "00"
        ds.ContainerIdentifier = name
        ds.IssuerOfTheContainerIdentifierSequence = []
        ds.ContainerTypeCodeSequence = [_code("433466003", "SCT", "Microscope slide")]
        specimen = Dataset()
        specimen.SpecimenIdentifier = f"{name}-specimen"
        specimen.SpecimenUID = generate_uid()
        specimen.IssuerOfTheSpecimenIdentifierSequence = []
        specimen.SpecimenPreparationSequence = []
        ds.SpecimenDescriptionSequence = [specimen]
        # Geometry and tiling.
        ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem = 20.0
        origin.YOffsetInSlideCoordinateSystem = 40.0
        ds.TotalPixelMatrixOriginSequence = [origin]
        ds.ImagedVolumeWidth = base_width * mpp / 1000
        ds.ImagedVolumeHeight = base_height * mpp / 1000
        ds.ImagedVolumeDepth = 0.004
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
        ds.Columns = ds.Rows = tile
        ds.NumberOfFrames = len(frames)
        ds.DimensionOrganizationType = "TILED_FULL"
        organisation = Dataset()
        organisation.DimensionOrganizationUID = dimension
        ds.DimensionOrganizationSequence = [organisation]
        ds.TotalPixelMatrixFocalPlanes = 1
        ds.NumberOfOpticalPaths = len(planes)
        ds.OpticalPathSequence = [
            _optical_path(str(c), channels[c] if multi and channels else None, bits) for c in range(len(planes))
        ]
        measures = Dataset()
        measures.PixelSpacing = [spacing_mm, spacing_mm]
        measures.SliceThickness = 0.004
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
        # Pixel format.
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PresentationLUTShape = "IDENTITY"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.BitsAllocated = ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        ds.PixelData = np.stack(frames).astype(f"<u{bits // 8}").tobytes()
        ds["PixelData"].VR = "OW" if bits == 16 else "OB"

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"{name}-level{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_hanging_dicom(folder: Path) -> Path:
    """A 50×50, 16-bit MONOCHROME2, uncompressed, single-level DICOM WSI in 10×10 tiles.

    Why: `WsiDicom.open(...).save(..., add_missing_levels=True)` (what ingest does with DICOM input)
    cannot encode the generated 16-bit levels (wsidicom decodes 16-bit tiles to Pillow mode "I",
    which every wsidicom encoder refuses); the failure then races the pyramid writer's shutdown, and
    in some runs (timing-dependent) `PyramidTileAccumulator.shutdown` waits forever: the accumulator
    already in `CompletionTracker.wait_for_zero` is never woken by the cancellation.
    """
    return write_dicom_wsi(folder, [grey_pattern(50, 50, bits=16)], tile=10, name="hanging")[0]


def write_grey8_dicom(
    folder: Path, *, width: int = 96, height: int = 64, tile: int = 16, levels: int = 3, mpp: float = 0.5
) -> list[Path]:
    """8-bit grey (MONOCHROME2) brightfield DICOM WSI, one instance per level (`levels=1` for one).

    Why: monochrome-camera brightfield and grey exports exist; a tile server that assumes RGB, or a
    writer that assumes three samples, must still handle one 8-bit sample per pixel.
    """
    return write_dicom_wsi(folder, box_pyramid(grey_pattern(width, height, bits=8), levels), tile=tile, mpp=mpp,
                           name="grey8")


def write_multichannel_dicom(
    folder: Path,
    *,
    channels: int = 3,
    bits: Literal[8, 16] = 16,
    width: int = 64,
    height: int = 48,
    tile: int = 16,
    levels: int = 1,
    mpp: float = 0.65,
) -> list[Path]:
    """Multi-channel fluorescence DICOM WSI: one MONOCHROME2 optical path per channel, with a palette LUT.

    Why: DICOM stores multiplex fluorescence as several optical paths of one instance; each carries
    its excitation wavelength and a black-to-colour palette that tells a viewer the false colour.
    """
    if not 1 <= channels <= len(FLUORESCENCE_CHANNELS):
        raise ValueError(f"channels must be 1..{len(FLUORESCENCE_CHANNELS)}")
    pixels = channel_pattern(channels, width, height, bits=bits)
    return write_dicom_wsi(folder, box_pyramid(pixels, levels), tile=tile, mpp=mpp,
                           channels=FLUORESCENCE_CHANNELS[:channels], name=f"fluo{channels}x{bits}")


# --------------------------------------------------------------------------------------------
# TIFF and OME-TIFF
# --------------------------------------------------------------------------------------------


def _ome_metadata(mpp: float, channels: Sequence[Channel] | None, axes: str) -> dict[str, object]:
    metadata: dict[str, object] = {
        "axes": axes,
        "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm",
    }
    if channels:
        metadata["Channel"] = {
            "Name": [c.name for c in channels],
            # OME colours are signed 32-bit RGBA integers.
            "Color": [int.from_bytes(bytes((*c.color, 255)), "big", signed=True) for c in channels],
            "ExcitationWavelength": [c.excitation_nm for c in channels],
            "EmissionWavelength": [c.emission_nm for c in channels],
        }
    return metadata


def _write_ome_pyramid(path: Path, pyramid: list[np.ndarray], *, tile: int, mpp: float,
                       channels: Sequence[Channel] | None, compression: str | None) -> None:
    """OME-TIFF 6 pyramid: full-resolution plane(s) as top-level IFDs, reduced levels in their SubIFDs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = "CYX" if pyramid[0].ndim == 3 else "YX"
    options: dict[str, Any] = {"tile": (tile, tile), "photometric": "minisblack", "compression": compression,
                               "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=False, ome=True) as tif:
        res = 10_000.0 / mpp
        tif.write(pyramid[0], subifds=len(pyramid) - 1, resolution=(res, res),
                  metadata=_ome_metadata(mpp, channels, axes), **options)
        for level, data in enumerate(pyramid[1:], start=1):
            tif.write(data, subfiletype=1, resolution=(res / 2**level, res / 2**level), **options)


def write_grey16_tiff(
    path: Path,
    *,
    ome: bool = False,
    width: int = 96,
    height: int = 64,
    tile: int = 16,
    levels: int = 3,
    mpp: float = 0.5,
    compression: str | None = "zlib",
) -> Path:
    """Single-channel uint16 tiled pyramid TIFF with resolution tags (or, with `ome`, an OME-TIFF).

    Why: brightfield monochrome cameras and single-channel fluorescence scans are saved as 16-bit
    grey; the generic TIFF has one page per level (NewSubfileType 1 for reduced levels), the
    OME-TIFF keeps the reduced levels in SubIFDs with PhysicalSizeX/Y in µm.
    """
    path = Path(path)
    pyramid = box_pyramid(grey_pattern(width, height, bits=16), levels)
    if ome:
        _write_ome_pyramid(path, pyramid, tile=tile, mpp=mpp, channels=None, compression=compression)
        return path
    res = 10_000.0 / mpp
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for level, data in enumerate(pyramid):
            tif.write(data, tile=(tile, tile), photometric="minisblack", compression=compression,
                      subfiletype=0 if level == 0 else 1, resolution=(res / 2**level, res / 2**level),
                      resolutionunit="CENTIMETER", metadata=None, software=False,
                      description="slidebank synthetic 16-bit grey pyramid" if level == 0 else None)
    return path


def write_multichannel_ome_tiff(
    path: Path,
    *,
    channels: int = 4,
    width: int = 96,
    height: int = 64,
    tile: int = 16,
    levels: int = 3,
    mpp: float = 0.65,
    compression: str | None = "zlib",
) -> Path:
    """Multi-channel (C, Y, X) uint16 fluorescence OME-TIFF pyramid, one tiled page per channel.

    Why: the common export of multiplex immunofluorescence scanners (and of bfconvert/QuPath);
    channel names, colours and wavelengths live only in the OME-XML, the pyramid in SubIFDs.
    """
    if not 1 <= channels <= len(FLUORESCENCE_CHANNELS):
        raise ValueError(f"channels must be 1..{len(FLUORESCENCE_CHANNELS)}")
    path = Path(path)
    pyramid = box_pyramid(channel_pattern(channels, width, height, bits=16), levels)
    _write_ome_pyramid(path, pyramid, tile=tile, mpp=mpp, channels=FLUORESCENCE_CHANNELS[:channels],
                       compression=compression)
    return path


# --------------------------------------------------------------------------------------------
# Aperio SVS without a pixel size
# --------------------------------------------------------------------------------------------


def rgb_pattern(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Pink-and-purple RGB test pixels (H&E-like colours) with fine noise."""
    grey = grey_pattern(width, height, bits=8, seed=seed).astype(np.float32) / 255
    rgb = np.stack([235 - 60 * grey, 190 - 130 * grey, 225 - 60 * grey], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 YCbCr (JFIF), the colour space of Aperio 33003 JPEG 2000 tiles."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.clip(np.rint(np.stack([y, cb, cr], axis=-1)), 0, 255).astype(np.uint8)


def _aperio_description(width: int, height: int, tile: int, level_size: tuple[int, int] | None,
                        codec: str, mpp: float | None) -> str:
    """Aperio ImageDescription; with `mpp=None` there is no 'MPP =' field (what this module is about)."""
    size = f"{width}x{height} ({tile}x{tile})"
    if level_size is not None:
        size += f" -> {level_size[0]}x{level_size[1]}"
    fields = "|AppMag = 20" + (f"|MPP = {mpp!r}" if mpp else "") + "|StripeWidth = 1000|ScanScope ID = SS0001"
    return f"{APERIO_LIBRARY} \r\n{size} {codec}{fields}"


def _write_svs(path: Path, pyramid: list[np.ndarray], tile: int, encode: Callable[[np.ndarray], bytes] | None,
               compression: int | str, codec: str, mpp: float | None, extra: dict[str, Any]) -> None:
    """Aperio page order without associated images: baseline, thumbnail (stripped), reduced levels."""
    height, width = pyramid[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for level, data in enumerate(pyramid):
            level_size = None if level == 0 else (data.shape[1], data.shape[0])
            description = _aperio_description(width, height, tile, level_size, codec, mpp)
            if encode is None:
                tif.write(data, tile=(tile, tile), photometric="rgb", compression=compression, metadata=None,
                          software=False, description=description, **extra)
            else:
                tiles = (encode(t) for t in _tiles(data, tile))
                tif.write(tiles, shape=data.shape, dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                          compression=compression, metadata=None, software=False, description=description)
            if level == 0:  # Aperio's second page is a small stripped thumbnail
                thumb = pyramid[-1]
                tif.write(thumb, photometric="rgb", compression="jpeg", rowsperstrip=thumb.shape[0], metadata=None,
                          software=False, description=_aperio_description(
                              width, height, tile, (thumb.shape[1], thumb.shape[0]), "JPEG/RGB Q=80", mpp))


def write_aperio_j2k_svs(
    path: Path,
    *,
    colorspace: Literal["ycbcr", "rgb"] = "ycbcr",
    width: int = 128,
    height: int = 96,
    tile: int = 32,
    levels: int = 3,
    mpp: float | None = None,
) -> Path:
    """JPEG 2000 Aperio SVS (compression 33003 YCbCr or 33005 RGB), tiled pyramid, by default without MPP.

    Why: older Aperio scanners and ImageScope exports use JPEG 2000 tiles, which opentile cannot
    copy, and some exports drop the 'MPP =' field, leaving no pixel size anywhere in the file.
    """
    path = Path(path)
    pyramid = box_pyramid(rgb_pattern(width, height), levels)
    if colorspace == "ycbcr":
        def encode(t: np.ndarray) -> bytes:
            return bytes(imagecodecs.jpeg2k_encode(_to_ycbcr(t), level=80, codecformat="J2K", mct=False))

        compression, codec = APERIO_J2K_YCBCR, "J2K/YUV16 Q=70"
    else:
        def encode(t: np.ndarray) -> bytes:
            return bytes(imagecodecs.jpeg2k_encode(t, level=80, codecformat="J2K", mct=True))

        compression, codec = APERIO_J2K_RGB, "J2K/KDU Q=70"
    _write_svs(path, pyramid, tile, encode, compression, codec, mpp, {})
    return path


def write_aperio_jpeg_svs(
    path: Path,
    *,
    width: int = 128,
    height: int = 96,
    tile: int = 32,
    levels: int = 3,
    mpp: float | None = 0.5,
    tiff_resolution_mpp: float | None = None,
    pixels: np.ndarray | None = None,
) -> Path:
    """An ordinary JPEG Aperio SVS (4:2:0 YCbCr tiles, as scanners write them).

    Why: the everyday case, at sizes that are not multiples of the tile size and with fewer levels
    than the converter must add, so tests see the edge frames of generated levels. `mpp=None`
    leaves out 'MPP =' (opentile then refuses the file); `tiff_resolution_mpp` writes the TIFF
    resolution tags, which OpenSlide's Aperio driver ignores (so they cannot stand in for 'MPP =').
    `pixels` (Y, X, 3 uint8) replaces the test pattern (and `width`, `height`).
    """
    path = Path(path)
    pyramid = box_pyramid(rgb_pattern(width, height) if pixels is None else pixels, levels)
    extra: dict[str, Any] = {"compressionargs": {"level": 90}, "subsampling": (2, 2)}
    if tiff_resolution_mpp:
        extra |= {"resolution": (10_000 / tiff_resolution_mpp,) * 2, "resolutionunit": "CENTIMETER"}
    _write_svs(path, pyramid, tile, None, "jpeg", "JPEG/RGB Q=90", mpp, extra)
    return path


def write_aperio_jpeg_svs_without_mpp(
    path: Path, *, width: int = 128, height: int = 96, tile: int = 32, levels: int = 3
) -> Path:
    """An ordinary JPEG Aperio SVS whose ImageDescription has no 'MPP =' field.

    Why: the same missing-pixel-size case on a format whose tiles opentile can copy losslessly.
    """
    return write_aperio_jpeg_svs(path, width=width, height=height, tile=tile, levels=levels, mpp=None)
