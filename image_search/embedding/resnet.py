"""iv2's ResNet47_50Net (ResNet50 cut inside its last block, 512-d, GeM + L2): the original's model.

iv2 itself is only used for the architecture. Its own forward pools with a fixed 7x7 window
(wrong for any input but 224x224) and returns (512, N); its loader uses strict=False, dropping
mismatched keys silently. Here the same trunk is wrapped with whole-map GeM, returns (N, 512),
and the checkpoint is checked key by key before anything is loaded.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from iv2.model import ResNet47_50Net
from torch import nn

from image_search.config import ModelSettings
from image_search.embedding.base import gem
from image_search.embedding.weights import CONFIG_HINT
from image_search.errors import ModelUnavailable

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

# iv2's GeM ignores its learnable `p` and always uses these; matching iv2 means doing the same.
IV2_GEM_P = 3.0
IV2_EPS = 1e-6

# iv2 builds `features` from resnet50's children minus avgpool and fc, in this order.
_TORCHVISION_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_TORCHVISION_PREFIX = {f"{name}.": f"features.{i}." for i, name in enumerate(_TORCHVISION_CHILDREN)}
# Keys with no place in the trunk. layer4's last block is iv2's HalfBottleneck (conv1/bn1,
# conv2/bn2 only), so that block's conv3/bn3 go; iv2 never applies whitening (its `whiten` is
# None and a 2048-d whitening cannot apply to 512-d output) and never reads the learned GeM p.
_DROPPED_TORCHVISION = ("fc.", "layer4.2.conv3.", "layer4.2.bn3.")
_DROPPED_IV2 = ("whiten.", "lwhiten.", "pool.", "features.7.2.conv3.", "features.7.2.bn3.")
# The int8 build keeps the stem and layer1 (features.0-4: the 112x112 and 56x56 maps) in fp32,
# as the gate showed EfficientNet needs. It has not been gated for resnet50: weights are the
# operator's, so int8 runs only when model.precision says so (runtime.GATED_INT8).
INT8_FIRST_INT8_STAGE = 5
_STAGE = re.compile(r"(?:^|/)features\.(\d+)/")
# Batch-norm step counters: only used when training, absent from pre-0.4.1 checkpoints.
_OPTIONAL_SUFFIX = "num_batches_tracked"


class ResNet47GeM(nn.Module):
    """iv2's trunk, whole-map GeM and iv2's L2 normalisation: (N,3,H,W) -> (N, 512)."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pool in fp32 even under bf16 autocast: cubes of activations lose too much in bf16.
        pooled = gem(self.features(x).float(), p=IV2_GEM_P, eps=IV2_EPS)
        # iv2's l2n adds eps to the norm instead of clamping it; keep its exact arithmetic.
        out: torch.Tensor = pooled / (pooled.norm(p=2, dim=1, keepdim=True) + IV2_EPS)
        return out


def build_trunk(device: str | torch.device = "cpu") -> nn.Sequential:
    """iv2's `features` Sequential (random init unless device is "meta"; never a model alone)."""
    with torch.device(device):
        features: nn.Sequential = ResNet47_50Net().features
    return features


def network(weights: Path, cfg: ModelSettings) -> nn.Module:
    """ResNet47_50Net with these weights (model.weights, already fetched and checked)."""
    source = cfg.weights or str(weights)
    checkpoint = _torch_load(weights, source=source, pinned=bool(cfg.weights_sha256))
    state = map_checkpoint(checkpoint, source=source)
    # Build on the meta device (no 25M-parameter random init) and adopt the checked tensors.
    net = ResNet47GeM(build_trunk("meta"))
    check_state(net, state, source=source)
    for name, buf in net.state_dict().items():
        if name.endswith(_OPTIONAL_SUFFIX) and name not in state:
            state[name] = torch.zeros(buf.shape, dtype=buf.dtype)
    net.load_state_dict(state, strict=True, assign=True)
    logger.info("resnet50: loaded %d tensors from %s", len(state), source)
    return net


def _torch_load(path: Any, source: str, pinned: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not pinned:
            raise ModelUnavailable(
                f"model weights {source!r}: not a weights-only torch checkpoint (corrupt, or "
                "it holds pickled objects, which could run code); if you trust the file, pin "
                f"it with model.weights_sha256 (ISE__MODEL__WEIGHTS_SHA256): {exc}"
            ) from exc
        # The operator pinned these exact bytes, so full unpickling runs only trusted content.
        logger.warning("model weights %s: not weights-only; loading the pinned file fully", source)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc2:
            raise ModelUnavailable(f"model weights {source!r}: cannot load: {exc2}") from exc2
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelUnavailable(
            f"model weights {source!r}: not a readable torch checkpoint: {exc}; {CONFIG_HINT}"
        ) from exc


def map_checkpoint(checkpoint: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Either layout -> tensors named as in ResNet47GeM (`features.N...`), dropped keys removed."""
    raw = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
    ):
        keys = list(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint)
        raise ModelUnavailable(
            f"model weights {source!r}: expected a state dict or {{'state_dict': ...}}, "
            f"got {keys}; {CONFIG_HINT}"
        )
    # nn.DataParallel / DistributedDataParallel save every name under `module.`.
    state = {k.removeprefix("module."): v for k, v in raw.items()}
    dropped: tuple[str, ...]
    if any(k.startswith("features.") for k in state):
        layout, dropped = "cnnimageretrieval", _DROPPED_IV2
        p = state.get("pool.p")
        if p is not None and p.numel() == 1 and abs(float(p) - IV2_GEM_P) > 1e-4:
            logger.info("resnet50: checkpoint GeM p=%.4f is ignored, as iv2 does (p=3)", float(p))
    elif "conv1.weight" in state:
        layout, dropped = "torchvision", _DROPPED_TORCHVISION
    else:
        raise ModelUnavailable(
            f"model weights {source!r}: unrecognised layout (first keys {list(state)[:5]}); "
            "expected cnnimageretrieval (features.*) or torchvision resnet50 (conv1.*, layer1.*)"
        )
    gone = sorted(k for k in state if k.startswith(dropped))
    if gone:
        logger.info("resnet50: %s layout, dropping %d unused keys: %s", layout, len(gone), gone)
    rename = _torchvision_name if layout == "torchvision" else str
    # Half-precision checkpoints are fine; the network computes in fp32 (bf16 by autocast only).
    return {
        rename(k): v.float() if v.is_floating_point() else v
        for k, v in state.items()
        if not k.startswith(dropped)
    }


def _torchvision_name(key: str) -> str:
    for old, new in _TORCHVISION_PREFIX.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key  # left as is, so the strict check reports it as unexpected


def check_state(network: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Our strict check: every tensor the forward pass uses present, shaped right, nothing extra."""
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    missing = sorted(k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIX))
    unexpected = sorted(k for k in state if k not in expected)
    misshaped = sorted(
        f"{k} {tuple(v.shape)} != {expected[k]}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    )
    if missing or unexpected or misshaped:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", misshaped),
            )
            if keys
        ]
        raise ModelUnavailable(
            f"model weights {source!r} do not fit resnet50 (iv2 ResNet47_50Net): "
            + "; ".join(parts)
            + f"; {CONFIG_HINT} to a matching checkpoint"
        )


def int8_fp32_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes the int8 build keeps in fp32: stem, layer1, the last conv and the GeM + L2 tail.

    The structure (52 convs, the last one 512 channels wide) is asserted, so a change upstream
    cannot silently move the cut.
    """
    nodes = list(graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    stage = {i: int(m.group(1)) for i, n in enumerate(nodes) if (m := _STAGE.search(n.name))}
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    last = convs[-1]
    assert len(convs) == 52, f"expected ResNet47_50Net's 52 convs, found {len(convs)}"
    assert graph.input[0].name in nodes[convs[0]].input, "the stem conv must read the input"
    assert shapes[nodes[last].input[1]][0] == 512, "the last conv is not the 512-d one"
    assert stage.get(last) == 7 and all(i not in stage for i in range(last + 1, len(nodes)))
    cut = min(i for i, st in stage.items() if st == INT8_FIRST_INT8_STAGE)
    return [n.name for n in nodes[:cut]] + [n.name for n in nodes[last:]]
