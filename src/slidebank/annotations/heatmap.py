"""Heatmap rasters to RGBA PNGs the viewer lays over the slide (transparent where unmeasured)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Anchor colours from 0 to 1; between anchors colours are interpolated linearly.
COLORMAPS: dict[str, list[tuple[int, int, int]]] = {
    "inferno": [(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)],
    "green": [(0, 120, 0), (0, 230, 60)],
    "red": [(120, 0, 0), (255, 40, 40)],
}
ALPHA = 150  # of a cell with a value; cells of 0 in a mask-like map stay clear


def render_png(values: np.ndarray, colormap: str = "inferno", mask_like: bool = False) -> bytes:
    """PNG of a [0, 1] grid; NaN cells (and zeros of a mask) are transparent."""
    anchors = np.array(COLORMAPS.get(colormap, COLORMAPS["inferno"]), dtype=np.float32)
    clean = np.nan_to_num(np.clip(values, 0.0, 1.0), nan=0.0)
    positions = np.linspace(0.0, 1.0, len(anchors))
    rgba = np.zeros((*values.shape, 4), dtype=np.uint8)
    for channel in range(3):
        rgba[..., channel] = np.interp(clean, positions, anchors[:, channel]).astype(np.uint8)
    visible = ~np.isnan(values)
    if mask_like:
        visible &= clean > 0
    rgba[..., 3] = np.where(visible, ALPHA, 0)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
