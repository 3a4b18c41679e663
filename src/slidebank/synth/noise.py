"""Deterministic hashing and band-limited waves: the noise every synthetic pixel is built from.

Both are analytic functions of global integer or level-0 coordinates, never of a random stream, so
any rectangle of any level evaluates to the same values however the slide is cut into tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_PX = np.uint32(0x8DA6B343)
_PY = np.uint32(0xD8163841)


def mix32(h: np.ndarray) -> np.ndarray:
    """Integer avalanche (lowbias32) so neighbouring coordinates give unrelated values."""
    h = h ^ (h >> np.uint32(16))
    h = h * _M1
    h = h ^ (h >> np.uint32(15))
    h = h * _M2
    return h ^ (h >> np.uint32(16))


def make_salt(*parts: int) -> np.uint32:
    """Fold small integers (seed, level, layer) into one 32-bit salt."""
    h = np.array([0x9E3779B9], dtype=np.uint32)
    for part in parts:
        h = mix32(h ^ np.uint32(part & 0xFFFFFFFF))
    return np.uint32(h[0])


def hash2d(cols: np.ndarray, rows: np.ndarray, salt: np.uint32) -> np.ndarray:
    """Per-(row, col) 32-bit hash of global integer coordinates."""
    cx = (cols.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32) * _PX
    ry = (rows.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32) * _PY
    return mix32(ry[:, None] ^ cx[None, :] ^ salt)


def unit(h: np.ndarray) -> np.ndarray:
    """Hash to float32 uniform in [0, 1)."""
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


@dataclass(frozen=True)
class Waves:
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
               angle: float | None = None, spread: float = math.pi) -> Waves:
        wl = np.exp(rng.uniform(math.log(wl_min), math.log(wl_max), count))
        theta = rng.uniform(0, 2 * math.pi, count) if angle is None else angle + rng.uniform(-spread, spread, count)
        k = 2 * math.pi / wl
        amp = rng.uniform(0.5, 1.0, count)
        amp = amp / math.sqrt(float((amp**2).sum()) / 2)  # unit standard deviation overall
        return Waves(k * np.cos(theta), k * np.sin(theta), rng.uniform(0, 2 * math.pi, count), amp, wl)

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
