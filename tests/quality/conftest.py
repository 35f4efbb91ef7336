"""The models under the gate, built once per session into a private cache, and the gate's data.

The gate runs on efficientnet-lite0, whose weights ship with the engine. To gate another model
with your weights (resnet50's int8 is opt-in until you have):
    ISE_GATE_MODEL=resnet50 ISE__MODEL__WEIGHTS=/path/to.pth .venv/bin/pytest tests/quality
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from image_search.config import ModelSettings
from image_search.embedding import load_embedder, model_card
from image_search.embedding.onnx_runtime import OnnxEmbedder
from tests.quality.gate import GateSet, Vectors, gate_set, vectors

MODEL = os.environ.get("ISE_GATE_MODEL", "efficientnet-lite0")
# 10 photos: 250 gallery images, 500 edited queries. Enough to tell the int8 builds apart
# (docs/model-runtimes.md has the sweep), small enough for the suite's time budget.
CROPS_PER_PHOTO = 24
EDITED_CROPS_PER_PHOTO = 4


def gate_settings(runtime: str, precision: str, **extra: Any) -> ModelSettings:
    """MODEL on this runtime and precision, 2 threads, weights from ISE__MODEL__* if set."""
    weights = {
        key: os.environ[f"ISE__MODEL__{key.upper()}"]
        for key in ("weights", "weights_sha256")
        if f"ISE__MODEL__{key.upper()}" in os.environ
    }
    return ModelSettings.model_validate(
        {"name": MODEL, "runtime": runtime, "precision": precision, "threads": 2,
         **weights, **extra}
    )  # fmt: skip


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def onnx_models(model_cache: Path) -> dict[str, OnnxEmbedder]:
    """The ONNX graphs, by precision (fp32, int8), built here once per session."""
    models = {}
    for precision in ("fp32", "int8"):
        model = load_embedder(gate_settings("onnx", precision, cache_dir=str(model_cache)))
        assert isinstance(model, OnnxEmbedder)
        models[precision] = model
    return models


@pytest.fixture(scope="session")
def gate_data() -> GateSet:
    return gate_set(model_card(MODEL).spec, CROPS_PER_PHOTO, EDITED_CROPS_PER_PHOTO)


@pytest.fixture(scope="session")
def fp32_vectors(onnx_models: dict[str, OnnxEmbedder], gate_data: GateSet) -> Vectors:
    """The reference: ONNX fp32, which test_gate checks equals torch fp32 to 1e-4."""
    return vectors(onnx_models["fp32"].embed, gate_data)
