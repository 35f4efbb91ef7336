"""The ONNX Runtime runtime: a model's network as an fp32 or static-int8 graph, built on first load.

The graph is built from the same torch weights (onnx_build.py) into model.cache_dir, under a
name keyed by everything it is made from: the weights' sha256, the model, the precision, the
source of the build recipe, the calibration photos and the exporter/runtime versions. Nothing
is downloaded; a changed input makes a new file, never a stale one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from image_search.config import ModelSettings
from image_search.embedding import ModelCard, calibration, model_weights
from image_search.embedding.model_cache import cached
from image_search.embedding.pixels import Normaliser, unit_rows
from image_search.embedding.runtime import Precision, RuntimeChoice, model_id
from image_search.embedding.weights import sha256_file

logger = logging.getLogger(__name__)

# The code a graph is built by: a change to any of these makes new cache keys.
RECIPE_MODULES = (
    "image_search.embedding.onnx_build",
    "image_search.embedding.base",
    "image_search.embedding.pixels",
)
BUILD_PACKAGES = ("torch", "onnx", "onnxruntime")


class GraphEmbedder(ABC):
    """What the embedders over the cached ONNX graph share (ONNX Runtime here, OpenVINO in
    openvino_runtime.py): the identity, and uint8 pixels in, unit rows out, around the
    runtime's forward pass (normalised (N,3,H,W) float32 -> unit (N, dim))."""

    def __init__(self, path: Path, card: ModelCard, choice: RuntimeChoice) -> None:
        self.path = path
        self.choice = choice
        self.model_id = model_id(card.name, choice)
        self.dim = card.dim
        self.spec = card.spec
        self._normalise = Normaliser(card.mean, card.std)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        x = self._normalise(batch)
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._forward(x)

    @abstractmethod
    def _forward(self, x: np.ndarray) -> np.ndarray:
        """The runtime's pass: normalised (N,3,H,W) float32, N > 0 -> unit (N, dim) float32."""


class OnnxEmbedder(GraphEmbedder):
    """Runs an ONNX graph that maps normalised (N,3,H,W) float32 to (N, dim) descriptors."""

    def __init__(self, path: Path, cfg: ModelSettings, card: ModelCard, choice: RuntimeChoice):
        super().__init__(path, card, choice)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads would spin for work, taking CPU from the Decoder on the same node.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def _forward(self, x: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {self._input: x})
        return unit_rows(features)


def _source_sha256(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"cannot find the source of {module}")
    return sha256_file(Path(spec.origin))


def build_inputs(cfg: ModelSettings, card: ModelCard, weights: Path) -> dict[str, Any]:
    """What every graph of this model is made from, as JSON-able data (its hash names files)."""
    # A configured sha256 was checked when the weights were fetched; otherwise hash the file.
    pinned = (cfg.weights_sha256 or "").strip().lower().removeprefix("sha256:")
    return {
        "model": card.name,
        "weights_sha256": pinned or sha256_file(weights),
        "recipe": {m: _source_sha256(m) for m in (*RECIPE_MODULES, card.module)},
        "versions": {p: importlib.metadata.version(p) for p in BUILD_PACKAGES},
    }


def graph_path(cache_dir: str, inputs: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / "onnx" / f"{inputs['model']}-{inputs['precision']}-{key}.onnx"


def ensure_graph(cfg: ModelSettings, card: ModelCard, precision: Precision) -> Path:
    """The graph file for this precision, built and cached first if need be."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"ONNX Runtime runs fp32 or int8, not {precision}")
    weights = model_weights(cfg, card)
    common = build_inputs(cfg, card, weights)

    def export(out: Path) -> None:
        from image_search.embedding.onnx_build import export_fp32  # torch: on a miss only

        export_fp32(card, weights, cfg, out)

    fp32_inputs = {**common, "precision": "fp32"}
    fp32 = cached(graph_path(cfg.cache_dir, fp32_inputs), export, fp32_inputs)
    if precision == "fp32":
        return fp32

    def quantize(out: Path) -> None:
        from image_search.embedding.onnx_build import quantize_int8

        quantize_int8(card, fp32, out)

    int8_inputs = {**common, "precision": "int8", "calibration_sha256": calibration.digest()}
    return cached(graph_path(cfg.cache_dir, int8_inputs), quantize, int8_inputs)


def load(cfg: ModelSettings, card: ModelCard, choice: RuntimeChoice) -> OnnxEmbedder:
    path = ensure_graph(cfg, card, choice.precision)
    logger.info("%s:%s runs %s", card.name, choice.tag, path)
    return OnnxEmbedder(path, cfg, card, choice)
