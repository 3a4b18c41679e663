"""Synthetic H&E/IHC-like whole-slide images with real vendor layouts and fake PHI.

Why procedural: tests need slides of any size (up to ~100k px a side) that real readers (OpenSlide,
opentile, wsidicomizer) accept, that look like tissue at every pyramid level, and whose tissue
location is known exactly (`tissue_mask`) so tissue detection can be scored.  Every pixel is an
analytic function of its global level-0 coordinate, the seed and the level, so any tile of any level
can be rendered on its own: tiles join seamlessly, memory stays bounded (one tile per worker plus the
TIFF writer's offset tables) and the work parallelises across threads.

Image model (Beer-Lambert optical density, colours in intensity space):

* tissue: a few smooth ellipses plus low-frequency noise, thresholded at zero (`_TissueShape`);
* stroma: eosin (or, for IHC, faint haematoxylin/DAB) modulated by band-limited fibre texture;
* nuclei: two rotated, row-shifted cell lattices, each cell holding at most one ellipse confined to
  the cell, so a pixel only needs the nucleus of the cell it lies in (fully vectorised, no
  per-nucleus loop, no visible grid);
* lower levels evaluate the same functions at the pixel centres of the coarser grid, with texture
  attenuated like a box filter would and nuclei replaced by their expected coverage once they are
  sub-pixel, so levels look like downsampled versions of each other.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import math
import os
import random
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import imagecodecs
import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = [
    "SyntheticSlide",
    "default_label_text",
    "tissue_mask",
    "write_large_slide_from_tile",
    "write_synthetic_slide",
]

Vendor = Literal["aperio", "generic"]
Stain = Literal["HE", "IHC"]

APERIO_LIBRARY = "Aperio Image Library v12.0.15"
LABEL_SIZE = (400, 400)
MACRO_SIZE = (1280, 431)
THUMBNAIL_MAX = 1024
# Stored JPEG tiles are YCbCr 4:2:0, as tifffile writes RGB data with compression='jpeg' by default.
JPEG_SUBSAMPLING = (2, 2)
# Background glass intensity; tissue transmits from the same white level.
BACKGROUND = 240.0

# Stain optical-density vectors (R, G, B): commonly used reference H&E values and Ruifrok's DAB.
_HEMATOXYLIN = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)
_EOSIN = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)
_DAB = np.array([0.2680, 0.5700, 0.7760], dtype=np.float32)


@dataclass(frozen=True)
class SyntheticSlide:
    """What the generator wrote, so tests can check readers and de-identification against it."""

    path: Path
    width: int
    height: int
    vendor: str
    mpp: float
    level_dimensions: tuple[tuple[int, int], ...]
    label_text: str
    phi_strings: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Fake PHI
# --------------------------------------------------------------------------------------------

_LAST_NAMES = (
    "DOE", "ROE", "MUSTERMANN", "KOWALSKI", "NGUYEN", "HERNANDEZ", "OKAFOR", "LINDQVIST",
    "TANAKA", "MORETTI", "DUBOIS", "PETROVA", "OSULLIVAN", "ACHTERBERG", "FONSECA", "HALVORSEN",
)
_FIRST_NAMES = (
    "JANE", "JOHN", "ERIKA", "MAX", "ANNA", "LUIS", "CHIDI", "ASTRID",
    "YUKI", "GIULIA", "CAMILLE", "OLGA", "SEAN", "MAARTEN", "BEATRIZ", "INGRID",
)
_OPERATORS = ("mkowalczyk", "tnguyen", "ahernandez", "pwellington", "rokafor", "slindgren", "dbrennan")


@dataclass(frozen=True)
class _Phi:
    """The fake identifiers one slide carries; derived from the label text where it has them."""

    patient_name: str
    mrn: str
    accession: str
    filename: str
    operator: str
    date: str
    time: str

    def strings(self, label_text: str) -> tuple[str, ...]:
        found: list[str] = []
        for item in (label_text, self.patient_name, self.mrn, self.accession, self.filename, self.operator, self.date):
            if item and item not in found:
                found.append(item)
        return tuple(found)


def default_label_text(seed: int) -> str:
    """A realistic fake label ("LAST^FIRST MRN:12345678 S26-4711"), deterministic from the seed."""
    rng = random.Random(f"slidebank-label-{seed}")
    last = rng.choice(_LAST_NAMES)
    first = rng.choice(_FIRST_NAMES)
    mrn = f"{rng.randrange(10_000_000, 100_000_000)}"
    accession = f"S{rng.randrange(18, 27):02d}-{rng.randrange(1000, 99999)}"
    return f"{last}^{first} MRN:{mrn} {accession}"


def _make_phi(label_text: str, seed: int) -> _Phi:
    """Take name/MRN/accession from the label when present, else from the seed's fake identity."""
    fallback = default_label_text(seed).split()
    name = fallback[0]
    mrn = fallback[1].split(":", 1)[1]
    accession = fallback[2]
    for token in label_text.split():
        if "^" in token:
            name = token
        elif token.upper().startswith("MRN:") and len(token) > 4:
            mrn = token[4:]
        elif re.fullmatch(r"[A-Z]{1,3}\d{2}-\d{2,}", token):
            accession = token
    rng = random.Random(f"slidebank-phi-{seed}")
    operator = f"{rng.choice(_OPERATORS)}{rng.randrange(10, 99)}"
    when = _dt.datetime(2024, 1, 1, 7, 0, 0) + _dt.timedelta(
        days=rng.randrange(0, 800), seconds=rng.randrange(0, 11 * 3600)
    )
    filename = "_".join(part for part in re.split(r"[^A-Za-z0-9-]+", name) if part) + f"_{accession}"
    return _Phi(
        patient_name=name,
        mrn=mrn,
        accession=accession,
        filename=filename,
        operator=operator,
        date=when.strftime("%m/%d/%y"),
        time=when.strftime("%H:%M:%S"),
    )


# --------------------------------------------------------------------------------------------
# Deterministic hashing and band-limited waves
# --------------------------------------------------------------------------------------------

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_PX = np.uint32(0x8DA6B343)
_PY = np.uint32(0xD8163841)


def _mix32(h: np.ndarray) -> np.ndarray:
    """Integer avalanche (lowbias32) so neighbouring coordinates give unrelated values."""
    h = h ^ (h >> np.uint32(16))
    h = h * _M1
    h = h ^ (h >> np.uint32(15))
    h = h * _M2
    return h ^ (h >> np.uint32(16))


def _salt(*parts: int) -> np.uint32:
    """Fold small integers (seed, level, layer) into one 32-bit salt."""
    h = np.array([0x9E3779B9], dtype=np.uint32)
    for part in parts:
        h = _mix32(h ^ np.uint32(part & 0xFFFFFFFF))
    return np.uint32(h[0])


def _hash2d(cols: np.ndarray, rows: np.ndarray, salt: np.uint32) -> np.ndarray:
    """Per-(row, col) 32-bit hash of global integer coordinates."""
    cx = (cols.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32) * _PX
    ry = (rows.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32) * _PY
    return _mix32(ry[:, None] ^ cx[None, :] ^ salt)


def _unit(h: np.ndarray) -> np.ndarray:
    """Hash to float32 uniform in [0, 1)."""
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


@dataclass(frozen=True)
class _Waves:
    """A sum of plane waves, evaluated separably on a pixel grid.

    sin(kx*x + ky*y + p) = sin(kx*x + p)cos(ky*y) + cos(kx*x + p)sin(ky*y), so the 2-D sum over K
    waves needs only 1-D trigonometry plus 2K outer products.  Wavelengths are in level-0 pixels;
    a wave is attenuated like a box filter of the pixel footprint would, so coarse levels do not alias.
    """

    kx: np.ndarray
    ky: np.ndarray
    phase: np.ndarray
    amp: np.ndarray
    wavelength: np.ndarray

    @staticmethod
    def random(rng: np.random.Generator, count: int, wl_min: float, wl_max: float,
               angle: float | None = None, spread: float = math.pi) -> _Waves:
        wl = np.exp(rng.uniform(math.log(wl_min), math.log(wl_max), count))
        theta = rng.uniform(0, 2 * math.pi, count) if angle is None else angle + rng.uniform(-spread, spread, count)
        k = 2 * math.pi / wl
        amp = rng.uniform(0.5, 1.0, count)
        amp = amp / math.sqrt(float((amp**2).sum()) / 2)  # unit standard deviation overall
        return _Waves(k * np.cos(theta), k * np.sin(theta), rng.uniform(0, 2 * math.pi, count), amp, wl)

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Unfiltered value at scattered points (same shape as x and y)."""
        phase = np.multiply.outer(x, self.kx) + np.multiply.outer(y, self.ky) + self.phase
        return (np.sin(phase) * self.amp).sum(axis=-1).astype(np.float32)  # no BLAS threads

    def eval(self, x: np.ndarray, y: np.ndarray, footprint: float = 0.0, dtype: type = np.float32) -> np.ndarray:
        amp = self.amp * np.exp(-2.0 * (footprint / self.wavelength) ** 2) if footprint > 0 else self.amp
        keep = amp > 1e-3
        if not keep.any():
            return np.zeros((len(y), len(x)), dtype=dtype)
        kx, ky, ph, amp = self.kx[keep], self.ky[keep], self.phase[keep], amp[keep]
        ax = np.outer(kx, x) + ph[:, None]  # (K, cols)
        by = np.outer(ky, y)  # (K, rows)
        cos_y = (np.cos(by) * amp[:, None]).astype(dtype)
        sin_y = (np.sin(by) * amp[:, None]).astype(dtype)
        sin_x = np.sin(ax).astype(dtype)
        cos_x = np.cos(ax).astype(dtype)
        # Explicit rank-1 updates instead of a matmul: BLAS would spin up threads for such small
        # products (slower under our own thread pool) and its summation order depends on shape,
        # while this is bit-identical for any rectangle (tissue_mask must match the tiles).
        out = np.multiply.outer(cos_y[0], sin_x[0])
        tmp = np.empty_like(out)
        for k in range(len(kx)):
            if k:
                np.multiply.outer(cos_y[k], sin_x[k], out=tmp)
                out += tmp
            np.multiply.outer(sin_y[k], cos_x[k], out=tmp)
            out += tmp
        return out


# --------------------------------------------------------------------------------------------
# Tissue shape
# --------------------------------------------------------------------------------------------


class _TissueShape:
    """Where tissue is: max over a few ellipses of (1 - quadratic form) plus low-frequency noise > 0.

    Coordinates are normalised by the slide's longer side, so the layout depends only on
    (seed, width, height): the same blobs at any resolution and independent of mpp or stain.
    """

    def __init__(self, width: int, height: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0x7155])
        self.scale = float(max(width, height))
        aspect_w, aspect_h = width / self.scale, height / self.scale
        count = int(rng.integers(2, 5))
        self.centres = np.stack(
            [rng.uniform(0.25, 0.75, count) * aspect_w, rng.uniform(0.25, 0.75, count) * aspect_h], axis=1
        )
        short = min(aspect_w, aspect_h)
        base = rng.uniform(0.12, 0.28, count) * (0.5 + 0.5 * short)
        self.semi = np.stack([base, base * rng.uniform(0.45, 1.0, count)], axis=1)
        self.angle = rng.uniform(0, math.pi, count)
        self.noise = _Waves.random(rng, 7, 0.12, 0.6)
        self.noise_amp = 0.22
        target = float(rng.uniform(0.38, 0.52))
        # Scale the ellipses so the tissue covers about `target` of the slide (bisection on a coarse grid).
        gx = (np.arange(96) + 0.5) / 96 * aspect_w
        gy = (np.arange(96) + 0.5) / 96 * aspect_h
        lo, hi = 0.3, 4.0
        for _ in range(30):
            self.size = (lo + hi) / 2
            self._coef = self._quadratics()
            if (self._field_norm(gx, gy) > 0).mean() < target:
                lo = self.size
            else:
                hi = self.size
        self.size = (lo + hi) / 2
        self._coef = self._quadratics()

    def _quadratics(self) -> list[tuple[float, float, float, float, float]]:
        coef = []
        for (cx, cy), (a, b), theta in zip(self.centres, self.semi * self.size, self.angle, strict=True):
            c, s = math.cos(theta), math.sin(theta)
            # q = ((u c + v s)/a)^2 + ((-u s + v c)/b)^2 = A u^2 + B u v + C v^2
            big_a = c * c / a**2 + s * s / b**2
            big_b = 2 * c * s * (1 / a**2 - 1 / b**2)
            big_c = s * s / a**2 + c * c / b**2
            coef.append((float(cx), float(cy), big_a, big_b, big_c))
        return coef

    def _field_norm(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The field at normalised coordinates (level-0 pixels / longer side)."""
        field = None
        for cx, cy, big_a, big_b, big_c in self._coef:
            du, dv = u - cx, v - cy
            q = np.add.outer(big_c * dv * dv, big_a * du * du) + np.multiply.outer(big_b * dv, du)
            g = 1.0 - q
            field = g if field is None else np.maximum(field, g)
        assert field is not None
        field += self.noise_amp * self.noise.eval(u, v, dtype=np.float64)
        return field

    def field(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed tissue field at level-0 coordinates (pixel centres); tissue where > 0."""
        return self._field_norm(np.asarray(x, dtype=np.float64) / self.scale, np.asarray(y, dtype=np.float64) / self.scale)


def _centres(start: int, count: int, downsample: float) -> np.ndarray:
    """Level-0 coordinates of the centres of `count` pixels from `start` at `downsample`."""
    return (np.arange(start, start + count, dtype=np.float64) + 0.5) * downsample


def tissue_mask(width: int, height: int, seed: int = 0, downsample: int = 1) -> np.ndarray:
    """Boolean map of where `write_synthetic_slide(..., seed=seed)` puts tissue.

    Shape (ceil(height/downsample), ceil(width/downsample)); pixel (r, c) is sampled at the level-0
    point ((c + 0.5) * downsample, (r + 0.5) * downsample), exactly as the generator samples its
    power-of-two levels, so the mask agrees with the pixels of the level with that downsample.
    """
    if width < 1 or height < 1 or downsample < 1:
        raise ValueError("width, height and downsample must be positive")
    shape = _TissueShape(width, height, seed)
    cols = -(-width // downsample)
    rows = -(-height // downsample)
    out = np.empty((rows, cols), dtype=bool)
    xs = _centres(0, cols, downsample)
    step = max(1, (1 << 21) // cols)  # bounded temporaries for huge masks
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        out[r0:r1] = shape.field(xs, _centres(r0, r1 - r0, downsample)) > 0
    return out


# --------------------------------------------------------------------------------------------
# Tissue painter
# --------------------------------------------------------------------------------------------


def _transmit(stains: tuple[tuple[np.ndarray | None, np.ndarray], ...]) -> list[np.ndarray]:
    """Beer-Lambert: R, G, B planes transmitted through the given stain concentrations.

    Channel-planar on purpose: broadcasting over a trailing axis of 3 is several times slower.
    """
    planes = []
    for channel in range(3):
        od: np.ndarray | None = None
        for conc, vector in stains:
            if conc is None:
                continue
            term = conc * vector[channel]
            od = term if od is None else od + term
        assert od is not None
        planes.append(BACKGROUND * np.exp(-od))
    return planes


@dataclass(frozen=True)
class _NucleusLayer:
    """One rotated, row-shifted lattice of cells holding at most one nucleus each (level-0 pixels)."""

    cell: float
    angle: float  # lattice rotation (radians)
    r_min: float
    r_max: float
    elong_max: float
    h_min: float
    h_max: float
    presence: Callable[[np.ndarray, np.ndarray], np.ndarray]  # density fields -> probability
    index: int

    @property
    def mean_area(self) -> float:
        """Expected nucleus area (pi a b = pi r^2) used for sub-pixel levels."""
        return math.pi * (self.r_min**2 + self.r_min * self.r_max + self.r_max**2) / 3


class _Painter:
    """Renders any rectangle of any level from global coordinates (see module docstring)."""

    def __init__(self, width: int, height: int, seed: int, mpp: float, stain: Stain) -> None:
        self.shape = _TissueShape(width, height, seed)
        self.seed = seed
        self.stain = stain
        um = 1.0 / mpp  # level-0 pixels per micrometre
        rng = np.random.default_rng([seed, 0x5714])
        self.fibre_angle = float(rng.uniform(0, math.pi))
        self.fibres = _Waves.random(rng, 10, 9 * um, 45 * um, angle=self.fibre_angle, spread=0.6)
        self.grain = _Waves.random(rng, 8, 4 * um, 14 * um)
        self.regional = _Waves.random(rng, 6, 250 * um, 1500 * um)
        self.density = _Waves.random(rng, 6, 150 * um, 900 * um)
        self.lymph = _Waves.random(rng, 5, 120 * um, 600 * um)
        self.dab_field = _Waves.random(rng, 6, 60 * um, 500 * um)
        self.eosin_base = float(rng.uniform(0.45, 0.62))
        cell_a = 15.0 * um
        cell_b = 11.0 * um
        self.layers = (
            _NucleusLayer(cell_a, float(rng.uniform(0, math.pi / 2)), 2.6 * um, 4.6 * um, 2.6, 0.85, 1.45,
                          lambda dens, lym: np.clip(0.25 + 0.85 * dens, 0.05, 0.95), 0),
            _NucleusLayer(cell_b, float(rng.uniform(0, math.pi / 2)), 1.7 * um, 2.8 * um, 1.5, 1.35, 2.0,
                          lambda dens, lym: np.clip(0.05 + 0.25 * dens + 0.55 * lym, 0.02, 0.85), 1),
        )
        # DAB-positive nuclear fraction for IHC (a Ki-67-like proliferation index).
        self.positive_fraction = float(rng.uniform(0.2, 0.45))

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _sub_pixel_weight(downsample: float) -> float:
        """0: draw individual nuclei; 1: only their expected coverage (they are sub-pixel)."""
        return float(np.clip(math.log2(max(downsample, 1.0) / 4.0) / 3.0, 0.0, 1.0))

    def _densities(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cellularity and lymphocyte fields on a pixel grid (0..1)."""
        return self._density_maps(self.density.eval(x, y), self.lymph.eval(x, y))

    def _densities_at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same fields at scattered points (cell centres)."""
        return self._density_maps(self.density.at(x, y), self.lymph.at(x, y))

    @staticmethod
    def _density_maps(density: np.ndarray, lymph: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.clip(0.5 + 0.3 * density, 0.0, 1.0), np.clip(0.5 * lymph - 0.25, 0.0, 1.0)

    def _nuclei(self, layer: _NucleusLayer, x: np.ndarray, y: np.ndarray, downsample: float,
                salt: np.uint32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-pixel coverage, haematoxylin and DAB of this layer's nuclei, plus normalised radius^2.

        The lattice is rotated by a per-layer angle and every lattice row is shifted by a random
        fraction of a cell (brick-like), so no grid shows at coarse levels; each nucleus stays inside
        its cell, so a pixel only needs the nucleus of the one cell it falls in.
        """
        cell = layer.cell
        c, s = math.cos(layer.angle), math.sin(layer.angle)
        # Lattice-frame coordinates relative to the rectangle's first pixel, in float32: absolute
        # positions reach 1e5 px, so the (float64) reference is added back only on small arrays.
        ref_x = float(x[0]) * c + float(y[0]) * s
        ref_y = float(y[0]) * c - float(x[0]) * s
        xl = (x - x[0]).astype(np.float32)
        yl = (y - y[0]).astype(np.float32)
        xr = np.add.outer(yl * np.float32(s), xl * np.float32(c))
        yr = np.add.outer(yl * np.float32(c), xl * np.float32(-s))
        gy = np.floor(yr * np.float32(1.0 / cell) + np.float32(ref_y / cell)).astype(np.int64)
        gy0 = int(gy.min())
        uy = np.arange(gy0, int(gy.max()) + 1)
        row_shift = _unit(_hash2d(np.zeros(1, dtype=np.int64), uy, salt ^ np.uint32(0x5BD1E995)))[:, 0]
        gx = np.floor(
            xr * np.float32(1.0 / cell) + (row_shift + np.float32(ref_x / cell)).take(gy - gy0)
        ).astype(np.int64)
        gx0 = int(gx.min())
        ux = np.arange(gx0, int(gx.max()) + 1)
        flat = (gy - gy0) * len(ux) + (gx - gx0)

        h = _hash2d(ux, uy, salt)
        u = []
        for _ in range(7):
            u.append(_unit(h))
            h = _mix32(h + np.uint32(0x9E3779B9))
        left = (ux[None, :] - row_shift[:, None].astype(np.float64)) * cell
        top = np.broadcast_to(uy[:, None] * cell, left.shape).astype(np.float64)
        centre_x = (left + 0.5 * cell) * c - (top + 0.5 * cell) * s
        centre_y = (left + 0.5 * cell) * s + (top + 0.5 * cell) * c
        dens, lym = self._densities_at(centre_x, centre_y)
        present = u[0] < layer.presence(dens, lym)
        r = layer.r_min + (layer.r_max - layer.r_min) * u[1]
        elong_cap = np.minimum(layer.elong_max, (0.5 * cell - 1.0) / r)
        elong = 1.0 + (elong_cap - 1.0) * u[2] ** 2
        a = r * elong
        b = r / elong
        theta = np.pi * u[3] if layer.index else self.fibre_angle + 0.5 * (u[3] - 0.5)
        theta = theta - layer.angle  # orientation within the lattice frame
        room = np.maximum(cell - 2.0 * (a + 1.0), 0.0)
        cx = left + (a + 1.0) + room * u[4]
        cy = top + (a + 1.0) + room * u[5]
        hn = layer.h_min + (layer.h_max - layer.h_min) * u[6]
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        # rows of the inverse shape matrix, so (x1, y1) are in units of the semi-axes
        m00, m01 = cos_t / a, sin_t / a
        m10, m11 = -sin_t / b, cos_t / b
        sharp = r / max(downsample, 1.2)  # anti-aliasing: soft edge about one output pixel wide
        # an empty cell gets an edge offset so negative that its coverage clips to zero everywhere
        bias = np.where(present, 0.5, -1e6)

        def spread(values: np.ndarray, dtype: type = np.float32) -> np.ndarray:
            return np.asarray(values, dtype=dtype).ravel().take(flat)

        dx = xr - spread(cx - ref_x)
        dy = yr - spread(cy - ref_y)
        x1 = spread(m00) * dx + spread(m01) * dy
        y1 = spread(m10) * dx + spread(m11) * dy
        q = x1 * x1 + y1 * y1
        cover = np.clip((1.0 - np.sqrt(q)) * spread(np.broadcast_to(sharp, r.shape)) + spread(bias), 0.0, 1.0)
        stain = spread(hn)
        if self.stain == "IHC":
            positive = spread((u[6] * 7.31) % 1.0 < self.positive_fraction, np.bool_)
            dab = np.where(positive, stain * 0.8, 0.0).astype(np.float32)
            hem = np.where(positive, 0.35, stain * 0.75).astype(np.float32)
        else:
            dab = np.zeros_like(stain)
            hem = stain
        return cover, hem, dab, q

    # -- main entry ---------------------------------------------------------------------------

    def render(self, col0: int, row0: int, cols: int, rows: int, downsample: float, level_key: int) -> np.ndarray:
        """RGB uint8 (rows, cols, 3) for the pixels [row0, row0+rows) x [col0, col0+cols) of a level."""
        x = _centres(col0, cols, downsample)
        y = _centres(row0, rows, downsample)
        field = self.shape.field(x, y)
        tissue = field > 0
        salt = _salt(self.seed, level_key, 1)
        noise = _unit(_hash2d(np.arange(col0, col0 + cols), np.arange(row0, row0 + rows), salt))
        grain_scale = 1.0 / max(1.0, downsample / 1.5)
        bg = BACKGROUND + (noise - 0.5) * (5.0 * grain_scale)
        out = np.empty((rows, cols, 3), dtype=np.uint8)
        planes = [bg, bg.copy(), bg + 1.0]
        if tissue.any():
            rr = np.flatnonzero(tissue.any(axis=1))
            cc = np.flatnonzero(tissue.any(axis=0))
            r0, r1, c0, c1 = int(rr[0]), int(rr[-1]) + 1, int(cc[0]), int(cc[-1]) + 1
            patch = self._tissue(x[c0:c1], y[r0:r1], field[r0:r1, c0:c1], noise[r0:r1, c0:c1], downsample,
                                 grain_scale)
            inside = tissue[r0:r1, c0:c1]
            for plane, colour in zip(planes, patch, strict=True):
                np.copyto(plane[r0:r1, c0:c1], colour, where=inside)
        for channel, plane in enumerate(planes):
            out[..., channel] = np.clip(plane + 0.5, 0, 255)
        return out

    def _tissue(self, x: np.ndarray, y: np.ndarray, field: np.ndarray, noise: np.ndarray, downsample: float,
                grain_scale: float) -> list[np.ndarray]:
        """R, G, B float planes of the tissue inside this rectangle (the caller masks the background)."""
        foot = float(downsample)
        fibres = self.fibres.eval(x, y, foot)
        ridges = 1.0 - 2.0 * np.abs(np.tanh(0.8 * fibres))  # thin bright/dark streaks
        grain = self.grain.eval(x, y, foot)
        regional = self.regional.eval(x, y)
        edge = np.clip(field.astype(np.float32) * np.float32(1 / 0.08), 0.0, 1.0)
        edge = 0.6 + 0.4 * edge * edge * (3 - 2 * edge)
        speck = (noise - 0.5) * (0.35 * grain_scale)
        texture = 1.0 + 0.22 * ridges + 0.10 * grain + 0.12 * regional + speck
        if self.stain == "IHC":
            eosin = np.zeros_like(field, dtype=np.float32)
            hem_s = (0.16 * texture) * edge
            dab_s = np.clip(0.08 + 0.25 * self.dab_field.eval(x, y, foot), 0.0, 0.6) * texture * edge
        else:
            eosin = (self.eosin_base * texture) * edge
            hem_s = (0.07 + 0.03 * regional) * edge
            dab_s = None
        stroma = _transmit(((eosin, _EOSIN), (hem_s, _HEMATOXYLIN), (dab_s, _DAB)))

        weight = self._sub_pixel_weight(downsample)
        cover_total = np.zeros_like(field, dtype=np.float32)
        hem_n = np.zeros_like(cover_total)
        dab_n = np.zeros_like(cover_total)
        if weight < 1.0:
            keep = np.ones_like(cover_total)
            for layer in self.layers:
                cover, hem, dab, q = self._nuclei(layer, x, y, downsample, _salt(self.seed, layer.index, 77))
                if downsample <= 2.0:
                    # chromatin: grainy, darker towards the nuclear membrane
                    chromatin = 0.8 + 0.35 * noise + 0.25 * np.clip(q, 0.0, 1.0)
                    hem = hem * chromatin
                    dab = dab * chromatin
                hem_n += cover * hem
                dab_n += cover * dab
                cover_total += cover
                keep *= 1.0 - cover
            norm = np.maximum(cover_total, 1e-6)
            hem_n /= norm
            dab_n /= norm
            cover_total = (1.0 - keep) * (1.0 - weight)
        if weight > 0.0:
            dens, lym = self._densities(x, y)
            expect_h = np.zeros_like(cover_total)
            expect_c = np.zeros_like(cover_total)
            for layer in self.layers:
                c = layer.presence(dens, lym) * (layer.mean_area / layer.cell**2)
                expect_c += c
                expect_h += c * (layer.h_min + layer.h_max) / 2
            expect_h /= np.maximum(expect_c, 1e-6)
            if self.stain == "IHC":
                expect_d = expect_h * self.positive_fraction * 0.8
                expect_h = expect_h * (1 - self.positive_fraction) * 0.75 + 0.35 * self.positive_fraction
            else:
                expect_d = np.zeros_like(expect_h)
            mixed = cover_total + weight * expect_c
            safe = np.maximum(mixed, 1e-6)
            hem_n = (cover_total * hem_n + weight * expect_c * expect_h) / safe
            dab_n = (cover_total * dab_n + weight * expect_c * expect_d) / safe
            cover_total = mixed
        if not cover_total.any():
            return stroma
        nuclei = _transmit(
            ((hem_n * edge, _HEMATOXYLIN), (0.15 * eosin, _EOSIN), (dab_n * edge if self.stain == "IHC" else None, _DAB))
        )
        return [s + cover_total * (n - s) for s, n in zip(stroma, nuclei, strict=True)]


# --------------------------------------------------------------------------------------------
# Pyramid geometry and tile streaming
# --------------------------------------------------------------------------------------------


def _level_dimensions(width: int, height: int, tile_size: int) -> tuple[tuple[int, int], ...]:
    """Power-of-two levels (ceil sizes) down to the first whose longer side fits in one tile."""
    dims = [(width, height)]
    while max(dims[-1]) > tile_size:
        k = len(dims)
        dims.append((-(-width // (1 << k)), -(-height // (1 << k))))
    return tuple(dims)


def _jpeg(tile: np.ndarray, quality: int) -> bytes:
    """Encode one tile exactly as tifffile would for compression='jpeg', photometric='rgb'."""
    return bytes(
        imagecodecs.jpeg8_encode(
            tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=JPEG_SUBSAMPLING
        )
    )


_ALLOCATOR_LOCK = threading.Lock()
_ALLOCATOR_TUNED = False


def _tune_allocator() -> None:
    """Stop glibc from returning and re-faulting the ~5 MB of per-tile temporaries every tile.

    With the default dynamic thresholds glibc trims freed heap tops and mmaps 256 KiB+ arrays, so
    each tile re-faults its scratch memory: ~40% of the run time went to page faults.  Raising the
    thresholds (process-wide, once, glibc only) keeps that scratch memory mapped; the heap still
    only holds what the worker threads use at their peak (tens of MB).
    """
    global _ALLOCATOR_TUNED
    with _ALLOCATOR_LOCK:
        if _ALLOCATOR_TUNED:
            return
        _ALLOCATOR_TUNED = True
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # noqa: B018 - only glibc has mallopt with these knobs
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        m_trim_threshold, m_mmap_threshold = -1, -3
        mallopt(m_mmap_threshold, 4 << 20)
        mallopt(m_trim_threshold, 32 << 20)


def _workers() -> int:
    """Threads for rendering/encoding: the CPUs this process may run on (at most 8)."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    return max(1, min(8, available))


def _ordered_parallel(tasks: Iterator[Callable[[], bytes]], workers: int) -> Iterator[bytes]:
    """Run tasks on a thread pool keeping a bounded window in flight; yield results in order."""
    if workers <= 1:
        for task in tasks:
            yield task()
        return
    window: deque[Future[bytes]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slidebank-synth") as pool:
        for task in tasks:
            window.append(pool.submit(task))
            if len(window) >= 3 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


BLUR_SIGMA = 6.0  # level-0 pixels: a badly out-of-focus scan at 0.25 µm/px


def _defocus(tile: np.ndarray, x0: int, y0: int, downsample: float,
             blurred: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """Gaussian-blur the parts of a tile (level pixels from x0, y0) inside the level-0 `blurred` rectangles."""
    sigma = BLUR_SIGMA / downsample
    if sigma < 0.5:
        return tile
    rows, cols = tile.shape[:2]
    for bx, by, bw, bh in blurred:
        c0, c1 = max(0, int(bx / downsample) - x0), min(cols, int((bx + bw) / downsample) - x0)
        r0, r1 = max(0, int(by / downsample) - y0), min(rows, int((by + bh) / downsample) - y0)
        if c0 < c1 and r0 < r1:
            smooth = ndimage.gaussian_filter(tile.astype(np.float32), sigma=(sigma, sigma, 0))
            tile = tile.copy()
            tile[r0:r1, c0:c1] = np.clip(smooth[r0:r1, c0:c1] + 0.5, 0, 255).astype(np.uint8)
    return tile


def _level_tiles(painter: _Painter, level: int, dims: tuple[int, int], tile_size: int, quality: int,
                 workers: int, blurred: Sequence[tuple[int, int, int, int]] = ()) -> Iterator[bytes]:
    """Encoded tiles of one level in TIFF order (row-major); `blurred` level-0 rectangles out of focus."""
    w, h = dims
    downsample = float(1 << level)

    def tasks() -> Iterator[Callable[[], bytes]]:
        for ty in range(-(-h // tile_size)):
            for tx in range(-(-w // tile_size)):
                def task(tx: int = tx, ty: int = ty) -> bytes:
                    tile = painter.render(tx * tile_size, ty * tile_size, tile_size, tile_size, downsample, level)
                    if blurred:
                        tile = _defocus(tile, tx * tile_size, ty * tile_size, downsample, blurred)
                    return _jpeg(tile, quality)

                yield task

    return _ordered_parallel(tasks(), workers)


def _render_small(painter: _Painter, width: int, height: int, cols: int, rows: int) -> np.ndarray:
    """A whole small overview image (thumbnail/macro source), rendered in bounded strips."""
    downsample = max(width / cols, height / rows)
    out = np.empty((rows, cols, 3), dtype=np.uint8)
    for r0 in range(0, rows, 128):
        r1 = min(rows, r0 + 128)
        out[r0:r1] = painter.render(0, r0, cols, r1 - r0, downsample, 4099)
    return out


def _thumbnail_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, THUMBNAIL_MAX / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


# --------------------------------------------------------------------------------------------
# Label and macro images
# --------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: bitmap font, scaled by the caller
        return ImageFont.load_default()


def _render_label(label_text: str, barcode: str) -> np.ndarray:
    """A slide label photo: printed text lines plus a fake 1-D barcode of `barcode`."""
    w, h = LABEL_SIZE
    image = Image.new("RGB", (w, h), (248, 247, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle([4, 4, w - 5, h - 5], outline=(200, 200, 195), width=2)
    lines = label_text.split() or [label_text]
    size = 34
    font = _font(size)
    top = 18
    for line in lines[:6]:
        while size > 12 and draw.textlength(line, font=font) > w - 30:
            size -= 2
            font = _font(size)
        draw.text((16, top), line, fill=(20, 20, 30), font=font)
        top += size + 10
    # Code-39-like bars derived from the barcode text, so different slides get different patterns.
    rng = random.Random(f"barcode-{barcode}")
    x = 24
    bar_top, bar_bottom = max(top + 10, h - 130), h - 40
    while x < w - 30:
        bar = rng.choice((2, 2, 3, 5))
        draw.rectangle([x, bar_top, x + bar - 1, bar_bottom], fill=(10, 10, 10))
        x += bar + rng.choice((2, 3, 4))
    draw.text((24, bar_bottom + 6), barcode, fill=(20, 20, 30), font=_font(18))
    pixels = np.asarray(image, dtype=np.float32)
    # a hint of camera noise so it looks photographed; seeded from the text, so deterministic
    noise = np.random.default_rng(sum(barcode.encode())).normal(0, 2.0, pixels.shape)
    return np.clip(pixels + noise, 0, 255).astype(np.uint8)


def _render_macro(overview: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Macro camera photo of the whole glass slide: label on the left, tissue overview on the right."""
    w, h = MACRO_SIZE
    macro = Image.new("RGB", (w, h), (214, 216, 218))
    label_w = h
    macro.paste(Image.fromarray(label).resize((label_w - 20, h - 20), Image.Resampling.BILINEAR), (10, 10))
    area_w, area_h = w - label_w - 40, h - 40
    ov = Image.fromarray(overview)
    scale = min(area_w / ov.width, area_h / ov.height)
    ov = ov.resize((max(1, int(ov.width * scale)), max(1, int(ov.height * scale))), Image.Resampling.BILINEAR)
    # glass is a bit darker than the scanner's white background; tint the overview to match
    ov_px = np.asarray(ov, dtype=np.float32) * (216.0 / BACKGROUND)
    ov = Image.fromarray(np.clip(ov_px, 0, 255).astype(np.uint8))
    macro.paste(ov, (label_w + 20 + (area_w - ov.width) // 2, 20 + (area_h - ov.height) // 2))
    return np.asarray(macro)


# --------------------------------------------------------------------------------------------
# File layout
# --------------------------------------------------------------------------------------------


def _aperio_metadata(phi: _Phi, mpp: float, objective_power: int, width: int, height: int) -> str:
    """The key=value tail Aperio repeats in every image of an SVS; carries the fake PHI."""
    return (
        f"|AppMag = {objective_power}|MPP = {mpp!r}|Filename = {phi.filename}|Date = {phi.date}"
        f"|Time = {phi.time}|User = {phi.operator}|ScanScope ID = SS1234|Barcode = {phi.accession}"
        f"|Title = {phi.patient_name}|Patient ID = {phi.mrn}|StripeWidth = 2032|Time Zone = GMT+01:00"
        f"|Left = 25.691574|Top = 23.449873|LineCameraSkew = -0.000424|LineAreaXOffset = 0.019265"
        f"|LineAreaYOffset = -0.000313|Focus Offset = 0.000000|ImageID = {100000 + sum(phi.mrn.encode()) * 997 % 900000}"
        f"|OriginalWidth = {width}|OriginalHeight = {height}|ICC Profile = ScanScope v1"
    )


def _generic_description(phi: _Phi, label_text: str) -> str:
    return (
        f"Patient: {phi.patient_name} MRN {phi.mrn} Accession {phi.accession} File {phi.filename} "
        f"scanned by {phi.operator} on {phi.date} {phi.time}; label: {label_text}; "
        "slidebank synthetic pyramidal TIFF"
    )


def _description(text: str) -> str | bytes:
    """tifffile wants 7-bit ASCII strings; pass anything else through as UTF-8 bytes."""
    return text if text.isascii() else text.encode("utf-8")


def _use_bigtiff(width: int, height: int, bytes_per_pixel: float, bigtiff: bool | None) -> bool:
    """Classic TIFF offsets end at 4 GiB; switch early (3.5 GB) using a pessimistic size estimate."""
    if bigtiff is not None:
        return bigtiff
    estimate = width * height * bytes_per_pixel * 4 / 3 + 8_000_000
    return estimate > 3.5e9


def _jpeg_bytes_per_pixel(quality: int) -> float:
    """Upper estimate of our tissue's JPEG rate (measured about 0.35 B/px at Q90), with margin."""
    return 0.25 + 0.9 * max(0, quality - 70) / 30


@dataclass
class _Layout:
    """Everything `_write_file` needs, independent of where the tile bytes come from."""

    path: Path
    vendor: Vendor
    width: int
    height: int
    tile_size: int
    mpp: float
    objective_power: int
    quality: int
    bigtiff: bool
    label_text: str
    phi: _Phi
    level_dims: tuple[tuple[int, int], ...]
    level_tiles: Callable[[int], Iterator[bytes]]
    thumbnail: Callable[[], np.ndarray]
    # tifffile arguments that make the tags match the JPEG tile bytes we hand it
    subsampling: tuple[int, int] = JPEG_SUBSAMPLING
    rgb_jpeg: bool = False

    def tile_kwargs(self) -> dict[str, object]:
        args: dict[str, object] = {"level": self.quality}
        if self.rgb_jpeg:
            args["outcolorspace"] = "RGB"
        return {"photometric": "rgb", "compression": "jpeg", "subsampling": self.subsampling, "compressionargs": args}


def _write_file(layout: _Layout) -> None:
    """Write to a temporary name and rename, so a crash never leaves a truncated slide behind."""
    tmp = layout.path.with_name(layout.path.name + ".partial")
    try:
        _write_pages(layout, tmp)
        os.replace(tmp, layout.path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_pages(lay: _Layout, target: Path) -> None:
    """The vendor page layout (see `write_synthetic_slide`)."""
    w, h, ts = lay.width, lay.height, lay.tile_size
    with tifffile.TiffWriter(target, bigtiff=lay.bigtiff) as tif:
        if lay.vendor == "aperio":
            meta = _aperio_metadata(lay.phi, lay.mpp, lay.objective_power, w, h)
            tif.write(
                lay.level_tiles(0), shape=(h, w, 3), dtype=np.uint8, tile=(ts, ts), **lay.tile_kwargs(),
                metadata=None, software=False,
                description=_description(f"{APERIO_LIBRARY} \r\n{w}x{h} ({ts}x{ts}) JPEG/RGB Q={lay.quality}{meta}"),
            )
            thumb = lay.thumbnail()
            th, tw = thumb.shape[:2]
            tif.write(
                thumb, photometric="rgb", compression="jpeg", compressionargs={"level": 85},
                subsampling=(1, 1), rowsperstrip=th, metadata=None, software=False,
                description=_description(f"{APERIO_LIBRARY} \r\n{w}x{h} -> {tw}x{th} - {meta}"),
            )
            for level in range(1, len(lay.level_dims)):
                lw, lh = lay.level_dims[level]
                tif.write(
                    lay.level_tiles(level), shape=(lh, lw, 3), dtype=np.uint8, tile=(ts, ts), **lay.tile_kwargs(),
                    metadata=None, software=False,
                    description=_description(
                        f"{APERIO_LIBRARY} \r\n{w}x{h} ({ts}x{ts}) -> {lw}x{lh} JPEG/RGB Q={lay.quality}{meta}"
                    ),
                )
            label = _render_label(lay.label_text, lay.phi.accession)
            lh_, lw_ = label.shape[:2]
            tif.write(
                label, photometric="rgb", compression="lzw", rowsperstrip=lh_, subfiletype=1,
                metadata=None, software=False,
                description=_description(f"{APERIO_LIBRARY}\r\nlabel {lw_}x{lh_} -> {lay.label_text}"),
            )
            macro = _render_macro(thumb, label)
            mh, mw = macro.shape[:2]
            tif.write(
                macro, photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                subsampling=(1, 1), rowsperstrip=mh, subfiletype=9, metadata=None, software=False,
                description=_description(f"{APERIO_LIBRARY}\r\nmacro {mw}x{mh}"),
            )
        else:
            res = 10_000.0 / lay.mpp
            for level, (lw, lh) in enumerate(lay.level_dims):
                scale = float(1 << level)
                tif.write(
                    lay.level_tiles(level), shape=(lh, lw, 3), dtype=np.uint8, tile=(ts, ts), **lay.tile_kwargs(),
                    metadata=None, software=False,
                    subfiletype=0 if level == 0 else 1,
                    resolution=(res / scale, res / scale), resolutionunit="CENTIMETER",
                    description=_description(_generic_description(lay.phi, lay.label_text)) if level == 0 else None,
                )


def _check_args(width: int, height: int, tile_size: int, vendor: str, mpp: float) -> None:
    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    if tile_size < 16 or tile_size % 16:
        raise ValueError("tile_size must be a positive multiple of 16 (JPEG 4:2:0 MCUs)")
    if vendor not in ("aperio", "generic"):
        raise ValueError(f"unknown vendor {vendor!r}")
    if not mpp > 0:
        raise ValueError("mpp must be positive")


def write_synthetic_slide(
    path: Path,
    width: int,
    height: int,
    *,
    vendor: Vendor = "aperio",
    label_text: str | None = None,
    seed: int = 0,
    tile_size: int = 256,
    mpp: float = 0.25,
    objective_power: int = 40,
    jpeg_quality: int = 90,
    stain: Stain = "HE",
    bigtiff: bool | None = None,
    blurred: Sequence[tuple[int, int, int, int]] = (),
) -> SyntheticSlide:
    """Write a tissue-like pyramidal slide in bounded memory and return what was written.

    `blurred` level-0 rectangles (x, y, width, height) are written out of focus, to test focus QC.

    aperio: SVS page order baseline (tiled JPEG), thumbnail (stripped JPEG), reduced levels (tiled
    JPEG), label (stripped LZW, NewSubfileType 1), macro (stripped JPEG, NewSubfileType 9), each
    with an Aperio ImageDescription.  generic: one tiled JPEG page per power-of-two level with
    centimetre resolution tags.  Fake PHI goes into descriptions and label pixels; see `phi_strings`.
    """
    path = Path(path)
    _check_args(width, height, tile_size, vendor, mpp)
    if stain not in ("HE", "IHC"):
        raise ValueError(f"unknown stain {stain!r}")
    label = label_text if label_text is not None else default_label_text(seed)
    phi = _make_phi(label, seed)
    _tune_allocator()
    painter = _Painter(width, height, seed, mpp, stain)
    dims = _level_dimensions(width, height, tile_size)
    workers = _workers()
    tw, th = _thumbnail_size(width, height)
    layout = _Layout(
        path=path, vendor=vendor, width=width, height=height, tile_size=tile_size, mpp=mpp,
        objective_power=objective_power, quality=jpeg_quality,
        bigtiff=_use_bigtiff(width, height, _jpeg_bytes_per_pixel(jpeg_quality), bigtiff),
        label_text=label, phi=phi, level_dims=dims,
        level_tiles=lambda level: _level_tiles(painter, level, dims[level], tile_size, jpeg_quality, workers,
                                               blurred),
        thumbnail=lambda: _render_small(painter, width, height, tw, th),
    )
    _write_file(layout)
    return SyntheticSlide(path, width, height, vendor, mpp, dims, label, phi.strings(label))


# --------------------------------------------------------------------------------------------
# Large files from one repeated precompressed tile
# --------------------------------------------------------------------------------------------


def _jpeg_frame_info(data: bytes) -> tuple[int, int, int, tuple[int, int], bool]:
    """(width, height, components, chroma subsampling, is_rgb) from a baseline JPEG's headers."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("tile_jpeg is not a JPEG stream")
    pos = 2
    adobe_transform: int | None = None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("malformed JPEG marker sequence")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            adobe_transform = body[11]
        if marker in (0xC0, 0xC1):
            height = int.from_bytes(body[1:3], "big")
            width = int.from_bytes(body[3:5], "big")
            comps = body[5]
            ids = [body[6 + 3 * i] for i in range(comps)]
            samp = [body[7 + 3 * i] for i in range(comps)]
            h0, v0 = samp[0] >> 4, samp[0] & 15
            rest = {(s >> 4, s & 15) for s in samp[1:]}
            if comps == 3 and rest != {(1, 1)}:
                raise ValueError("unsupported JPEG chroma sampling")
            is_rgb = adobe_transform == 0 or ids == [ord("R"), ord("G"), ord("B")]
            return width, height, comps, (h0, v0), is_rgb
        if marker in (0xC2, 0xC3) or (0xC5 <= marker <= 0xCF and marker not in (0xC8, 0xCC)):
            raise ValueError("only baseline/extended sequential JPEG tiles are supported")
        if marker == 0xDA:
            break
        pos += 2 + length
    raise ValueError("no JPEG frame header found")


def _noisy_tissue_tile(tile_size: int, quality: int) -> bytes:
    """One tissue-looking tile with lots of fine detail, so each stored tile is big."""
    painter = _Painter(tile_size * 4, tile_size * 4, 9001, 0.25, "HE")
    mask = painter.shape.field(_centres(0, tile_size * 4, 1), _centres(0, tile_size * 4, 1)) > 0
    # pick the most tissue-rich tile position in a 4x4 neighbourhood
    best = max(
        ((ty, tx) for ty in range(4) for tx in range(4)),
        key=lambda p: mask[p[0] * tile_size:(p[0] + 1) * tile_size, p[1] * tile_size:(p[1] + 1) * tile_size].mean(),
    )
    tile = painter.render(best[1] * tile_size, best[0] * tile_size, tile_size, tile_size, 1.0, 0).astype(np.int16)
    rng = np.random.default_rng(4242)
    tile += rng.integers(-14, 15, tile.shape, dtype=np.int16)
    tile = np.clip(tile, 0, 255).astype(np.uint8)
    return bytes(
        imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(1, 1))
    )


def write_large_slide_from_tile(
    path: Path,
    width: int,
    height: int,
    tile_jpeg: bytes | None = None,
    *,
    tile_size: int = 512,
    vendor: Vendor = "aperio",
    mpp: float = 0.25,
    bigtiff: bool = True,
) -> SyntheticSlide:
    """Write a big slide at disk speed by repeating one precompressed JPEG tile on every level.

    For large-file tests (e.g. > 4 GiB BigTIFF ingest), not for image realism.  Tags are derived
    from the tile's own JPEG header (size, subsampling, YCbCr vs RGB), so readers decode it right.
    """
    path = Path(path)
    _check_args(width, height, tile_size, vendor, mpp)
    if tile_jpeg is None:
        tile_jpeg = _noisy_tissue_tile(tile_size, 97)
    tile_w, tile_h, comps, subsampling, is_rgb = _jpeg_frame_info(tile_jpeg)
    if (tile_w, tile_h) != (tile_size, tile_size) or comps != 3:
        raise ValueError(f"tile_jpeg must be a {tile_size}x{tile_size} 3-component JPEG")
    decoded = np.asarray(imagecodecs.jpeg8_decode(tile_jpeg))
    dims = _level_dimensions(width, height, tile_size)
    label = default_label_text(0x1A46E)
    phi = _make_phi(label, 0x1A46E)
    tw, th = _thumbnail_size(width, height)

    def tiles(level: int) -> Iterator[bytes]:
        lw, lh = dims[level]
        for _ in range(-(-lw // tile_size) * -(-lh // tile_size)):
            yield tile_jpeg

    def thumbnail() -> np.ndarray:
        # the slide is the tile repeated; shrink one tile by the thumbnail scale and repeat that
        scale = tw / width
        cell = max(1, round(tile_size * scale))
        small = np.asarray(Image.fromarray(decoded).resize((cell, cell), Image.Resampling.BOX))
        reps = (-(-th // cell), -(-tw // cell), 1)
        return np.ascontiguousarray(np.tile(small, reps)[:th, :tw])

    layout = _Layout(
        path=path, vendor=vendor, width=width, height=height, tile_size=tile_size, mpp=mpp,
        objective_power=40, quality=97, bigtiff=bigtiff, label_text=label, phi=phi, level_dims=dims,
        level_tiles=tiles, thumbnail=thumbnail, subsampling=subsampling, rgb_jpeg=is_rgb,
    )
    _write_file(layout)
    return SyntheticSlide(path, width, height, vendor, mpp, dims, label, phi.strings(label))
