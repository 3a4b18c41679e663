"""Quality-control measurements on pixels: pure functions of numpy arrays (no slide, no database),
so they are tested on synthetic images with known answers and benchmarked against a reference.

- Tissue: Otsu on saturation, with near-white and near-black excluded, small specks removed and
  holes filled (the usual approach of HistoQC and TIAToolbox).
- Focus: variance of the Laplacian of the grey image of a tissue tile; low variance = no edges =
  out of focus.
- Pen: strongly saturated green/blue/black ink hues that H&E (pink to purple) does not produce.
- Folds/bubbles (dark tissue): overlapping tissue is much darker and more saturated than single.
- Stain: optical density of haematoxylin and eosin by colour deconvolution (Ruifrok & Johnston).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import color, filters, morphology


def tissue_mask(rgb: np.ndarray, min_object_fraction: float = 0.0005) -> np.ndarray:
    """Boolean mask of tissue in an RGB overview."""
    hsv = color.rgb2hsv(rgb)
    saturation, value = hsv[..., 1], hsv[..., 2]
    candidate = (value > 0.08) & (value < 0.98)
    if candidate.sum() < 16 or float(saturation[candidate].std()) < 1e-3:
        return np.zeros(rgb.shape[:2], dtype=bool)
    threshold = max(filters.threshold_otsu(saturation[candidate]), 0.05)
    mask = candidate & (saturation > threshold)
    min_size = max(4, int(mask.size * min_object_fraction))
    mask = morphology.remove_small_objects(mask, max_size=min_size)
    return ndimage.binary_fill_holes(ndimage.binary_closing(mask, morphology.disk(2)))


def laplacian_variance(rgb: np.ndarray) -> float:
    """Sharpness of a tile: variance of the Laplacian of its grey levels (0–255 scale)."""
    grey = color.rgb2gray(rgb) * 255.0
    return float(ndimage.laplace(grey).var())


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels of marker ink: saturated green/blue hues (H&E is red to purple) or near-black."""
    hsv = color.rgb2hsv(rgb)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    green_blue = (hue > 0.20) & (hue < 0.66) & (saturation > 0.35) & (value > 0.15)
    black = value < 0.12
    return green_blue | black


def dark_tissue_mask(rgb: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Tissue much darker than the slide's typical tissue: folds and trapped-air edges."""
    if not tissue.any():
        return np.zeros_like(tissue)
    value = color.rgb2hsv(rgb)[..., 2]
    typical = np.median(value[tissue])
    return tissue & (value < typical * 0.55)


def stain_statistics(rgb: np.ndarray, tissue: np.ndarray) -> dict[str, float]:
    """Mean and spread of haematoxylin and eosin optical density, and the mean tissue colour."""
    if not tissue.any():
        return {}
    hed = color.rgb2hed(rgb)
    pixels = rgb[tissue].astype(np.float64)
    stats = {
        "stain.hematoxylin_mean": float(hed[..., 0][tissue].mean()),
        "stain.hematoxylin_std": float(hed[..., 0][tissue].std()),
        "stain.eosin_mean": float(hed[..., 1][tissue].mean()),
        "stain.eosin_std": float(hed[..., 1][tissue].std()),
    }
    for index, channel in enumerate("rgb"):
        stats[f"stain.mean_{channel}"] = float(pixels[:, index].mean())
    return stats


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
