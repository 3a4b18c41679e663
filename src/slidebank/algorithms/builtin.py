"""Built-in algorithms: tissue detection and quality control (run after every ingest)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from slidebank.algorithms.base import HeatmapRaster, Parameter, Reads, SimpleAlgorithm, SlideResult, TaskContext
from slidebank.algorithms.reader import SlideReader
from slidebank.qc import detectors

OVERVIEW_MPP = Parameter("overview_mpp", float, 8.0, "µm/px of the overview used for tissue and pen", 0.1, 256)


def tissue_overview(slide: SlideReader, mpp: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Overview pixels, tissue mask without pen ink, and the overview's µm/px."""
    overview, overview_mpp = slide.overview(mpp)
    return overview, detectors.tissue_mask(overview) & ~detectors.pen_mask(overview), overview_mpp


def mask_heatmap(mask: np.ndarray, slide: SlideReader, mpp: float) -> HeatmapRaster:
    """A boolean overview mask as a heatmap (its pixels are `mpp / slide.mpp` level-0 pixels wide)."""
    scale = mpp / slide.mpp
    return HeatmapRaster(mask.astype(np.float32), (mask.shape[1] * scale, mask.shape[0] * scale), "green",
                         {"1": "tissue"})


def _area_values(mask: np.ndarray, mpp: float, prefix: str, slide: SlideReader) -> dict[str, float | str]:
    """Tissue fraction, and area in mm² only where the slide's pixel size is known."""
    values: dict[str, float | str] = {f"{prefix}.tissue_fraction": float(mask.mean()) if mask.size else 0.0}
    if slide.pixel_size_known:
        values[f"{prefix}.tissue_area_mm2"] = float(mask.sum()) * mpp * mpp / 1e6
    return values


def _unknown_size_note(slide: SlideReader) -> list[str]:
    if slide.pixel_size_known:
        return []
    return [f"pixel size unknown: levels chosen as if {slide.mpp} µm/px, no measure in µm or mm²"]


def run_tissue(slide: SlideReader, params: Mapping[str, Any], context: TaskContext) -> SlideResult:
    _, mask, mpp = tissue_overview(slide, params["overview_mpp"])
    return SlideResult(values=_area_values(mask, mpp, "tissue", slide),
                       heatmaps={"tissue": mask_heatmap(mask, slide, mpp)}, log=_unknown_size_note(slide))


TISSUE = SimpleAlgorithm(
    name="tissue", version="1.0.0",
    description="Tissue mask and area (Otsu on saturation, ink removed, holes filled).",
    parameters=(OVERVIEW_MPP,), reads=Reads("overview", 8.0), writes=("values", "heatmap"), function=run_tissue,
)


def run_qc(slide: SlideReader, params: Mapping[str, Any], context: TaskContext) -> SlideResult:
    overview, overview_mpp = slide.overview(params["overview_mpp"])
    candidate, ink = detectors.tissue_mask(overview), detectors.pen_mask(overview)
    tissue, pen = candidate & ~ink, candidate & ink
    context.check()
    dark = detectors.dark_tissue_mask(overview, tissue)
    tissue_pixels = max(1, int(tissue.sum()))

    grid = slide.grid(params["focus_mpp"], params["tile_size"])
    sharpness = grid.raster()
    variances: list[float] = []
    for tile in slide.tiles(params["focus_mpp"], params["tile_size"], tissue, min_fraction=0.5):
        context.check()
        variance = detectors.laplacian_variance(tile.pixels)
        variances.append(variance)
        sharpness[grid.place(tile)] = variance
    blurred = int(sum(v < params["blur_threshold"] for v in variances))
    blur_fraction = blurred / len(variances) if variances else 0.0

    values: dict[str, float | str] = {
        **_area_values(tissue, overview_mpp, "qc", slide),
        "qc.focus_tiles": float(len(variances)),
        "qc.blurred_tiles": float(blurred),
        "qc.blur_fraction": blur_fraction,
        "qc.laplacian_median": float(np.median(variances)) if variances else 0.0,
        "qc.pen_fraction": float(pen.sum()) / tissue_pixels,
        "qc.fold_fraction": float(dark.sum()) / tissue_pixels,
        **detectors.stain_statistics(overview, tissue),
    }
    if slide.pixel_size_known:
        values["qc.focus_mpp"] = slide.mpp_of(grid.level)
    flags = []
    if slide.pixel_size_known and float(values["qc.tissue_area_mm2"]) < params["min_tissue_mm2"]:
        flags.append(f"too little tissue ({values['qc.tissue_area_mm2']:.2f} mm²)")
    if blur_fraction > params["max_blur_fraction"]:
        flags.append(f"out of focus: {blur_fraction:.0%} of tissue tiles")
    if values["qc.pen_fraction"] > params["max_pen_fraction"]:
        flags.append(f"pen marks: {values['qc.pen_fraction']:.1%} of tissue area")
    if values["qc.fold_fraction"] > params["max_fold_fraction"]:
        flags.append(f"folds or bubbles: {values['qc.fold_fraction']:.1%} of tissue area")
    values["qc.passed"] = 0.0 if flags else 1.0
    values["qc.flags"] = "; ".join(flags)
    blur_score = 1.0 - np.clip(sharpness / (2 * params["blur_threshold"]), 0.0, 1.0)
    return SlideResult(
        values=values,
        heatmaps={
            "tissue": mask_heatmap(tissue, slide, overview_mpp),
            "blur": HeatmapRaster(blur_score, grid.extent, "inferno", {"0": "sharp", "1": "out of focus"}),
        },
        flags=flags,
        log=[f"{len(variances)} tissue tiles at {slide.mpp_of(grid.level):.2f} µm/px, {blurred} out of focus",
             *_unknown_size_note(slide)],
    )


QC = SimpleAlgorithm(
    name="qc", version="1.0.0",
    description="Quality control: tissue area, out-of-focus tiles (Laplacian variance), pen marks, "
                "folds, stain statistics; flags failing slides.",
    parameters=(
        OVERVIEW_MPP,
        Parameter("focus_mpp", float, 1.0, "µm/px at which focus is measured", 0.1, 64),
        Parameter("tile_size", int, 256, "focus tile size in pixels", 32, 2048),
        Parameter("blur_threshold", float, 40.0, "Laplacian variance below which a tile is out of focus", 0),
        Parameter("max_blur_fraction", float, 0.1, "flag when more tissue tiles are out of focus", 0, 1),
        Parameter("max_pen_fraction", float, 0.05, "flag when more of the tissue is pen ink", 0, 1),
        Parameter("max_fold_fraction", float, 0.1, "flag when more of the tissue is folded/dark", 0, 1),
        Parameter("min_tissue_mm2", float, 0.1, "flag slides with less tissue", 0),
    ),
    reads=Reads("overview + tissue tiles", 1.0, 256), writes=("values", "heatmap"), function=run_qc,
)
