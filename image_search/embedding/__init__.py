"""The model registry: every model's card (dimension, input spec, loader) and the one factory.

A card is plain data, kept apart from the torch code, so the Decoder, the ingress and the store
factory can ask for a model's input spec and dimension without loading a deep-learning runtime;
the model module named by the card is imported only when a model is loaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from image_search.errors import ConfigError
from image_search.imaging import PreprocessSpec

if TYPE_CHECKING:
    from image_search.config import ModelSettings

__all__ = [
    "ALLOCATOR_ENV",
    "MODELS",
    "Embedding",
    "EmbeddingModel",
    "ModelCard",
    "load_embedder",
    "model_card",
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


class EmbeddingModel(Protocol):
    """A loaded model, as the Embedder deployment, the Ray Data actors and the benches use it."""

    model_id: str
    dim: int
    spec: PreprocessSpec

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(N, crop, crop, 3) uint8 RGB -> (N, dim) float32, each row L2-normalised."""
        ...


@dataclass(frozen=True)
class ModelCard:
    """What the rest of the engine may know of a model without loading it."""

    name: str
    dim: int
    spec: PreprocessSpec
    module: str  # defines load(cfg: ModelSettings, card: ModelCard) -> EmbeddingModel


# Both models were trained at 224x224 after a 256 resize; iv2's pooling even requires it.
MODELS: dict[str, ModelCard] = {
    card.name: card
    for card in (
        ModelCard("efficientnet-lite0", 1280, PreprocessSpec(256, 224),
                  "image_search.embedding.efficientnet"),
        ModelCard("resnet50", 512, PreprocessSpec(256, 224), "image_search.embedding.resnet"),
    )
}  # fmt: skip


def model_card(name: str) -> ModelCard:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def load_embedder(cfg: ModelSettings) -> EmbeddingModel:
    """Load the configured model; raise ModelUnavailable when its weights cannot be had."""
    card = model_card(cfg.name)
    module = importlib.import_module(card.module)
    model: EmbeddingModel = module.load(cfg, card)
    return model
