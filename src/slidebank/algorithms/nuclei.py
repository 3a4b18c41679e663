"""Nuclei detection: haematoxylin by colour deconvolution, Otsu, distance-transform watershed
(scikit-image), one polygon per nucleus written as annotations of class "Nucleus"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import color, feature, filters, measure, morphology, segmentation

from slidebank.algorithms.base import Parameter, Reads, SimpleAlgorithm, SlideResult, TaskContext
from slidebank.algorithms.builtin import OVERVIEW_MPP, tissue_overview
from slidebank.algorithms.reader import SlideReader

NUCLEUS_COLOR = [70, 40, 200]


def segment_nuclei(rgb: np.ndarray, min_area: int, threshold: float | None = None) -> np.ndarray:
    """Label image of nuclei in an RGB tile (0 = background)."""
    hematoxylin = color.rgb2hed(rgb)[..., 0]
    smooth = filters.gaussian(hematoxylin, sigma=1.0)
    if threshold is None:
        if float(smooth.std()) < 1e-4:
            return np.zeros(rgb.shape[:2], dtype=np.int32)
        threshold = float(filters.threshold_otsu(smooth))
    mask = morphology.remove_small_objects(smooth > threshold, max_size=min_area)
    mask = ndimage.binary_fill_holes(mask)
    if not mask.any():
        return np.zeros(rgb.shape[:2], dtype=np.int32)
    distance = ndimage.distance_transform_edt(mask)
    peaks = feature.peak_local_max(distance, min_distance=3, labels=measure.label(mask), exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-distance, markers, mask=mask)


def nucleus_polygons(labels: np.ndarray, x0: int, y0: int, scale: float, min_area: int) -> list[dict[str, Any]]:
    """GeoJSON Polygon features (level-0 pixels) of each labelled region larger than min_area."""
    features = []
    for region in measure.regionprops(labels):
        if region.area < min_area:
            continue
        top, left, _, _ = region.bbox
        padded = np.pad(region.image, 1)
        contours = measure.find_contours(padded.astype(np.uint8), 0.5)
        if not contours:
            continue
        ring = max(contours, key=len)[::2]  # (row, col), every other vertex is plenty for a nucleus
        if len(ring) < 4:
            continue
        coordinates = [[float(round(x0 + (left + c - 1) * scale, 1)), float(round(y0 + (top + r - 1) * scale, 1))]
                       for r, c in ring]
        coordinates.append(coordinates[0])
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [coordinates]},
            "properties": {"objectType": "detection", "classification": {"name": "Nucleus", "color": NUCLEUS_COLOR},
                           "measurements": {"area_px": float(region.area * scale * scale)}},
        })
    return features


def run_nuclei(slide: SlideReader, params: Mapping[str, Any], context: TaskContext) -> SlideResult:
    _, tissue, _ = tissue_overview(slide, params["overview_mpp"])
    features: list[dict[str, Any]] = []
    tiles = 0
    level = slide.level_for(params["mpp"])
    scale = slide.downsample_of(level)  # level-0 pixels per pixel read
    for tile in slide.tiles(params["mpp"], params["tile_size"], tissue, min_fraction=0.25):
        context.check()
        labels = segment_nuclei(tile.pixels, params["min_area"])
        features += nucleus_polygons(labels, tile.x, tile.y, scale, params["min_area"])
        tiles += 1
        if params["max_tiles"] and tiles >= params["max_tiles"]:
            break
    return SlideResult(
        values={"nuclei.count": float(len(features)), "nuclei.tiles": float(tiles)},
        features=features,
        log=[f"{len(features)} nuclei in {tiles} tissue tiles at {slide.mpp_of(level):.2f} µm/px"],
    )


NUCLEI = SimpleAlgorithm(
    name="nuclei", version="1.0.0",
    description="Nuclei: haematoxylin by colour deconvolution, Otsu, watershed; one polygon per nucleus.",
    parameters=(
        OVERVIEW_MPP,
        Parameter("mpp", float, 0.5, "µm/px at which nuclei are segmented", 0.1, 4),
        Parameter("tile_size", int, 512, "tile size in pixels", 64, 4096),
        Parameter("min_area", int, 12, "smallest nucleus in pixels at that µm/px", 1),
        Parameter("max_tiles", int, 0, "stop after this many tissue tiles (0 = all)", 0),
    ),
    reads=Reads("tissue tiles", 0.5, 512), writes=("annotations", "values"), function=run_nuclei,
)
