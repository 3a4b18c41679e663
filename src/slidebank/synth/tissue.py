"""Where tissue is and what it looks like: the tissue shape and mask, the stain model, the painter.

Image model (Beer-Lambert optical density, colours in intensity space):

* tissue: a few smooth ellipses plus low-frequency noise, thresholded at zero (`_TissueShape`);
* stroma: eosin (or, for IHC, faint haematoxylin/DAB) modulated by band-limited fibre texture;
* nuclei: two rotated, row-shifted cell lattices, each cell holding at most one ellipse confined to
  the cell, so a pixel only needs the nucleus of the cell it lies in (fully vectorised, no
  per-nucleus loop, no visible grid);
* lower levels evaluate the same functions at the pixel centres of the coarser grid, with texture
  attenuated like a box filter would and nuclei replaced by their expected coverage once they are
  sub-pixel, so levels look like downsampled versions of each other.

Every pixel is an analytic function of its global level-0 coordinate, the seed and the level
(`slidebank.synth.noise`), so `Painter.render` can paint any rectangle of any level on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from slidebank.synth.noise import Waves, hash2d, make_salt, mix32, unit

Stain = Literal["HE", "IHC"]

# Background glass intensity; tissue transmits from the same white level.
BACKGROUND = 240.0

# Stain optical-density vectors (R, G, B): commonly used reference H&E values and Ruifrok's DAB.
_HEMATOXYLIN = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)
_EOSIN = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)
_DAB = np.array([0.2680, 0.5700, 0.7760], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Tissue shape and mask
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
        self.noise = Waves.random(rng, 7, 0.12, 0.6)
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
        u = np.asarray(x, dtype=np.float64) / self.scale
        v = np.asarray(y, dtype=np.float64) / self.scale
        return self._field_norm(u, v)


def pixel_centres(start: int, count: int, downsample: float) -> np.ndarray:
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
    xs = pixel_centres(0, cols, downsample)
    step = max(1, (1 << 21) // cols)  # bounded temporaries for huge masks
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        out[r0:r1] = shape.field(xs, pixel_centres(r0, r1 - r0, downsample)) > 0
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


class Painter:
    """Renders any rectangle of any level from global coordinates (see module docstring)."""

    def __init__(self, width: int, height: int, seed: int, mpp: float, stain: Stain) -> None:
        self.shape = _TissueShape(width, height, seed)
        self.seed = seed
        self.stain = stain
        um = 1.0 / mpp  # level-0 pixels per micrometre
        rng = np.random.default_rng([seed, 0x5714])
        self.fibre_angle = float(rng.uniform(0, math.pi))
        self.fibres = Waves.random(rng, 10, 9 * um, 45 * um, angle=self.fibre_angle, spread=0.6)
        self.grain = Waves.random(rng, 8, 4 * um, 14 * um)
        self.regional = Waves.random(rng, 6, 250 * um, 1500 * um)
        self.density = Waves.random(rng, 6, 150 * um, 900 * um)
        self.lymph = Waves.random(rng, 5, 120 * um, 600 * um)
        self.dab_field = Waves.random(rng, 6, 60 * um, 500 * um)
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
        row_shift = unit(hash2d(np.zeros(1, dtype=np.int64), uy, salt ^ np.uint32(0x5BD1E995)))[:, 0]
        gx = np.floor(
            xr * np.float32(1.0 / cell) + (row_shift + np.float32(ref_x / cell)).take(gy - gy0)
        ).astype(np.int64)
        gx0 = int(gx.min())
        ux = np.arange(gx0, int(gx.max()) + 1)
        flat = (gy - gy0) * len(ux) + (gx - gx0)

        h = hash2d(ux, uy, salt)
        u = []
        for _ in range(7):
            u.append(unit(h))
            h = mix32(h + np.uint32(0x9E3779B9))
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
        x = pixel_centres(col0, cols, downsample)
        y = pixel_centres(row0, rows, downsample)
        field = self.shape.field(x, y)
        tissue = field > 0
        salt = make_salt(self.seed, level_key, 1)
        noise = unit(hash2d(np.arange(col0, col0 + cols), np.arange(row0, row0 + rows), salt))
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
        # Annotated as plain arrays: numpy's stubs type the blends below as float64, though Python-float
        # weights leave them float32 at run time.
        hem_n: np.ndarray = np.zeros_like(cover_total)
        dab_n: np.ndarray = np.zeros_like(cover_total)
        if weight < 1.0:
            keep = np.ones_like(cover_total)
            for layer in self.layers:
                cover, hem, dab, q = self._nuclei(layer, x, y, downsample, make_salt(self.seed, layer.index, 77))
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
        nuclei = _transmit((
            (hem_n * edge, _HEMATOXYLIN),
            (0.15 * eosin, _EOSIN),
            (dab_n * edge if self.stain == "IHC" else None, _DAB),
        ))
        return [s + cover_total * (n - s) for s, n in zip(stroma, nuclei, strict=True)]


# --------------------------------------------------------------------------------------------
# Defocus
# --------------------------------------------------------------------------------------------

BLUR_SIGMA = 6.0  # level-0 pixels: a badly out-of-focus scan at 0.25 µm/px


def defocus(tile: np.ndarray, x0: int, y0: int, downsample: float,
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

