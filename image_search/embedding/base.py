"""The torch runtime every model runs on: uint8 RGB batches in, unit vectors out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from image_search.config import ModelSettings
from image_search.embedding import ModelCard

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over the whole feature map, whatever its size."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class TorchEmbedder:
    """Runs a network that maps normalised (N,3,H,W) tensors to (N, dim) descriptors."""

    def __init__(
        self,
        network: nn.Module,
        cfg: ModelSettings,
        card: ModelCard,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        torch.set_num_threads(cfg.threads)
        self.network = network.eval()
        self.model_id = cfg.model_id
        self.dim = card.dim
        self.spec = card.spec
        self.precision = cfg.precision
        # Scale and shift folded into one multiply-add on the uint8 input.
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / std_t

    def to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
            raise ValueError(f"expected (N,H,W,3) uint8, got {batch.shape} {batch.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
        return x * self._scale + self._shift

    @torch.inference_mode()
    def embed(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = self.to_tensor(batch)
        if self.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                feats = self.network(x.contiguous(memory_format=torch.channels_last))
        else:
            feats = self.network(x)
        feats = feats.float()
        feats = feats / feats.norm(dim=1, keepdim=True).clamp(min=1e-12)
        out: np.ndarray = feats.numpy().astype(np.float32, copy=False)
        return out
