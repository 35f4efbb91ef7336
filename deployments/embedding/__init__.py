"""Model registry and factory: settings.model -> an Embedder (efficientnet-lite0 or resnet50).

Kept free of torch imports so the Decoder and the ingress can ask for a model's input spec and
dimension without loading a deep-learning runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from deployments.config import ModelSettings
from deployments.imaging import PreprocessSpec

if TYPE_CHECKING:
    from deployments.embedding.base import TorchEmbedder

__all__ = ["Embedding", "load_embedder", "model_dim", "model_spec"]


@dataclass(frozen=True)
class Embedding:
    """A vector and the model that made it, so no store ever mixes two models' vectors."""

    model_id: str
    vector: np.ndarray


_DIMS = {"efficientnet-lite0": 1280, "resnet50": 512}
# Both models were trained at 224x224 after a 256 resize; iv2's pooling even requires it.
_SPECS = {
    "efficientnet-lite0": PreprocessSpec(resize=256, crop=224),
    "resnet50": PreprocessSpec(resize=256, crop=224),
}


def model_dim(name: str) -> int:
    return _DIMS[name]


def model_spec(name: str) -> PreprocessSpec:
    return _SPECS[name]


def load_embedder(cfg: ModelSettings) -> TorchEmbedder:
    """Load the configured model; raise ModelUnavailable when its weights cannot be had."""
    if cfg.name == "efficientnet-lite0":
        from deployments.embedding.efficientnet import load_efficientnet_lite0

        return load_efficientnet_lite0(cfg.precision, cfg.threads)
    from deployments.embedding.resnet import load_resnet50

    return load_resnet50(cfg)
