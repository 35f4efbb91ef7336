"""The torch runtime: a model's network in eager torch, fp32 or bf16 (autocast, channels_last).

It is also where every network comes from: the ONNX build exports the same module
(onnx_build.py), so both runtimes compute from the same weights.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from image_search.config import ModelSettings
from image_search.embedding import ModelCard, model_weights
from image_search.embedding.pixels import Normaliser, unit_rows
from image_search.embedding.runtime import RuntimeChoice, model_id


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over the whole feature map, whatever its size."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def network(card: ModelCard, weights: Path, cfg: ModelSettings) -> nn.Module:
    """The card's fp32 network with these weights, in eval mode: (N,3,H,W) -> (N, dim)."""
    module = importlib.import_module(card.module)
    net: nn.Module = module.network(weights, cfg)
    return net.eval()


class TorchEmbedder:
    """Runs a network that maps normalised (N,3,H,W) tensors to (N, dim) descriptors."""

    def __init__(
        self, network: nn.Module, cfg: ModelSettings, card: ModelCard, choice: RuntimeChoice
    ) -> None:
        torch.set_num_threads(cfg.threads)
        self.choice = choice
        self.model_id = model_id(card.name, choice)
        self.dim = card.dim
        self.spec = card.spec
        self.bf16 = choice.precision == "bf16"
        # bf16 feeds channels_last input; weights in the same layout avoid a conversion per conv.
        memory_format = torch.channels_last if self.bf16 else torch.contiguous_format
        self.network = network.eval().to(memory_format=memory_format)
        self._normalise = Normaliser(card.mean, card.std)

    def to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (N,H,W,3) -> the network's normalised float32 (N,3,H,W) input."""
        return torch.from_numpy(self._normalise(batch))

    @torch.inference_mode()
    def embed(self, batch: np.ndarray) -> np.ndarray:
        x = self.to_tensor(batch)
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                feats = self.network(x.contiguous(memory_format=torch.channels_last))
        else:
            feats = self.network(x)
        return unit_rows(feats.float().numpy())


def load(cfg: ModelSettings, card: ModelCard, choice: RuntimeChoice) -> TorchEmbedder:
    return TorchEmbedder(network(card, model_weights(cfg, card), cfg), cfg, card, choice)
