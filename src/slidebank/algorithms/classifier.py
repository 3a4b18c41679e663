"""Patch classifier: an ONNX model (onnxruntime) over tissue patches, written as a heatmap.

Any model with one float32 NCHW input of RGB in [0, 1] and one output whose first column is a
score in [0, 1] works, once the operator installed it (`slidebank models add tumour model.onnx`,
then `--param model=tumour`); patches are resized to the model's input size when it is fixed.
Without a model, a small built-in one runs: a logistic regression on mean patch colour that scores
haematoxylin-rich (cell-dense) patches high — a stand-in that exercises the whole path, not a
diagnostic model.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper
from PIL import Image

from slidebank.algorithms.base import HeatmapRaster, Parameter, Reads, SimpleAlgorithm, SlideResult, TaskContext
from slidebank.algorithms.builtin import OVERVIEW_MPP, tissue_overview
from slidebank.algorithms.models import MODEL_NAME
from slidebank.algorithms.reader import SlideReader

# Logistic regression on mean (R, G, B) in [0, 1]: purple/dark scores high, glass and pink stroma low.
DEMO_WEIGHTS = np.array([[-8.0], [-8.0], [4.0]], dtype=np.float32)
DEMO_BIAS = np.array([8.0], dtype=np.float32)


@cache
def demo_model() -> bytes:
    """The built-in model, built with onnx.helper: GlobalAveragePool → Flatten → Gemm → Sigmoid."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["patch"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "weights", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "cellularity-demo",
        [helper.make_tensor_value_info("patch", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor("weights", TensorProto.FLOAT, [3, 1], DEMO_WEIGHTS.ravel().tolist()),
         helper.make_tensor("bias", TensorProto.FLOAT, [1], DEMO_BIAS.tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="slidebank")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def open_session(model: bytes) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # Dask runs one task per worker thread; no oversubscription
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_classifier(slide: SlideReader, params: Mapping[str, Any], context: TaskContext) -> SlideResult:
    session = open_session(context.model(params["model"]) if params["model"] else demo_model())
    model_input = session.get_inputs()[0]
    fixed = model_input.shape[2:] if all(isinstance(d, int) for d in model_input.shape[2:]) else None
    _, tissue, _ = tissue_overview(slide, params["overview_mpp"])
    size = params["patch_size"]
    grid = slide.grid(params["mpp"], size)
    scores = grid.raster()
    batch: list[np.ndarray] = []
    places: list[tuple[int, int]] = []

    def flush() -> None:
        if batch:
            output = session.run(None, {model_input.name: np.stack(batch)})[0]
            for (row, column), score in zip(places, np.asarray(output).reshape(len(batch), -1)[:, 0], strict=True):
                scores[row, column] = float(score)
            batch.clear()
            places.clear()

    for tile in slide.tiles(params["mpp"], size, tissue, min_fraction=0.25):
        context.check()
        pixels = tile.pixels
        if fixed is not None and pixels.shape[:2] != tuple(fixed):
            pixels = np.asarray(Image.fromarray(pixels).resize((fixed[1], fixed[0])))
        elif pixels.shape[:2] != (size, size):  # an edge patch: pad with glass so shapes stack
            pixels = np.pad(pixels, ((0, size - pixels.shape[0]), (0, size - pixels.shape[1]), (0, 0)),
                            constant_values=240)
        batch.append(pixels.transpose(2, 0, 1).astype(np.float32) / 255.0)
        places.append(grid.place(tile))
        if len(batch) >= params["batch_size"]:
            flush()
    flush()
    measured = scores[~np.isnan(scores)]
    return SlideResult(
        values={
            "classifier.patches": float(measured.size),
            "classifier.mean_score": float(measured.mean()) if measured.size else 0.0,
            "classifier.positive_fraction": float((measured > params["threshold"]).mean()) if measured.size else 0.0,
        },
        heatmaps={"classifier": HeatmapRaster(scores, grid.extent, "inferno", {"0": "low score", "1": "high score"})},
        log=[f"{measured.size} patches at {slide.mpp_of(grid.level):.2f} µm/px through "
             f"{params['model'] or 'the built-in demo model'}"],
    )


PATCH_CLASSIFIER = SimpleAlgorithm(
    name="patch-classifier", version="1.0.0",
    description="An ONNX model over tissue patches (onnxruntime); writes a score heatmap.",
    parameters=(
        OVERVIEW_MPP,
        Parameter("model", str, "", "name of a model installed on the node (empty: the built-in demo model)",
                  pattern=MODEL_NAME.pattern),
        Parameter("mpp", float, 2.0, "µm/px of the patches", 0.1, 64),
        Parameter("patch_size", int, 224, "patch size in pixels", 16, 4096),
        Parameter("batch_size", int, 32, "patches per inference call", 1, 4096),
        Parameter("threshold", float, 0.5, "score above which a patch counts as positive", 0, 1),
    ),
    reads=Reads("tissue tiles", 2.0, 224), writes=("heatmap", "values"), function=run_classifier,
)
