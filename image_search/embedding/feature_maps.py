"""The feature map a model pools its global vector from, for region search's extra passes.

The global vector keeps coming from the model's own graph and session, untouched; this is a
second view of the same weights that also returns the map before global pooling, on inputs of
any height and width (the whole-image pass is not square). ONNX: the same graph file with that
tensor added as an output and the spatial input dimensions freed (the graph has no
shape-dependent op: padding is folded into the convs). OpenVINO: the embedder's own graph cut
at that tensor, at its precision (openvino_runtime.py). Torch: the network's trunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from image_search.embedding import EmbeddingModel, model_card
from image_search.embedding.pixels import Normaliser
from image_search.errors import ConfigError
from image_search.regions import RegionVectors, RegionViews, query_cells, stored_parts

logger = logging.getLogger(__name__)

FeatureMaps = Callable[[np.ndarray], np.ndarray]  # uint8 (N,H,W,3) -> float32 (N,C,h,w)


def load_feature_maps(model: EmbeddingModel, name: str, threads: int) -> FeatureMaps:
    card = model_card(name)
    normalise = Normaliser(card.mean, card.std)
    runtime = model.choice.runtime
    if runtime == "onnx":
        run = _onnx(model, threads)
    elif runtime == "openvino":
        run = _openvino(model)
    else:
        run = _torch(model)

    def maps(batch: np.ndarray) -> np.ndarray:
        return run(normalise(batch))

    return maps


def _onnx(model: EmbeddingModel, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    path = getattr(model, "path", None)
    if path is None:
        raise ConfigError(f"{model.model_id}: no ONNX graph to take the feature map from")
    session, input_name, map_name = onnx_feature_map_session(path, threads, model.model_id)

    def run(x: np.ndarray) -> np.ndarray:
        (fmap,) = session.run([map_name], {input_name: x})
        return np.asarray(fmap, dtype=np.float32)

    return run


def _openvino(model: EmbeddingModel) -> Callable[[np.ndarray], np.ndarray]:
    maps: Callable[[str], Callable[[np.ndarray], np.ndarray]] | None
    maps = getattr(model, "feature_maps", None)
    path = getattr(model, "path", None)
    if maps is None or path is None:
        raise ConfigError(f"{model.model_id}: no OpenVINO graph to take the feature map from")
    import onnx

    run: Callable[[np.ndarray], np.ndarray] = maps(
        gem_map_name(onnx.load(str(path)).graph, model.model_id)
    )
    return run


def gem_map_name(graph: Any, model_id: str) -> str:
    """The name of the tensor the ONNX graph's GeM pools (its last ReduceMean's)."""
    made_by = {out: node for node in graph.node for out in node.output}
    # GeM is Clip -> Pow -> ReduceMean -> Pow: the map is what the Clip reads.
    means = [n for n in graph.node if n.op_type == "ReduceMean"]
    clip = made_by.get(made_by[means[-1].input[0]].input[0]) if means else None
    if clip is None or clip.op_type != "Clip":
        raise ConfigError(f"{model_id}: the graph's pooling is not GeM; no region search")
    return str(clip.input[0])


def onnx_feature_map_session(path: Any, threads: int, model_id: str) -> tuple[Any, str, str]:
    """(session, input name, map output name) over the ONNX graph at `path`, whose outputs are
    the graph's own (the global vector) and then the map its GeM pools."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    graph = proto.graph
    map_name = gem_map_name(graph, model_id)
    graph.output.append(onnx.helper.make_tensor_value_info(map_name, onnx.TensorProto.FLOAT, None))
    dims = graph.input[0].type.tensor_type.shape.dim
    for i, dim_name in ((2, "height"), (3, "width")):
        dims[i].ClearField("dim_value")
        dims[i].dim_param = dim_name
    del graph.value_info[:]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(proto.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    return session, session.get_inputs()[0].name, map_name


def _torch(model: EmbeddingModel) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    net: Any = getattr(model, "network", None)
    # efficientnet's module wraps the package's network (extract_features); resnet's has a
    # `features` trunk. Both pool that map with GeM.
    if net is not None and hasattr(net, "net") and hasattr(net.net, "extract_features"):
        trunk = net.net.extract_features
    elif net is not None and hasattr(net, "features"):
        trunk = net.features
    else:
        raise ConfigError(f"{model.model_id}: no feature map to pool regions from")
    bf16 = model.choice.precision == "bf16"

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x)
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fm = trunk(t.contiguous(memory_format=torch.channels_last))
        else:
            fm = trunk(t)
        out: np.ndarray = fm.float().numpy()
        return out

    return run


class RegionEmbedder:
    """The extra passes of region search, batched: model-sized inputs (thumbnail views, cut
    query cells) through the model itself, whole-image inputs through the feature map."""

    def __init__(self, model: EmbeddingModel, maps: FeatureMaps, batch: int = 16) -> None:
        self.model = model
        self.maps = maps
        self.batch = batch

    def _embed(self, pixels: list[np.ndarray]) -> np.ndarray:
        if not pixels:
            return np.zeros((0, self.model.dim), np.float32)
        stacked = np.stack(pixels)
        return np.concatenate([self.model.embed(stacked[i : i + self.batch])
                               for i in range(0, len(stacked), self.batch)])  # fmt: skip

    def _maps(self, wholes: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """Feature maps of the whole inputs, batched by input shape (aspect ratios differ)."""
        out: list[np.ndarray | None] = [None] * len(wholes)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, w in enumerate(wholes):
            if w is not None:
                by_shape.setdefault(w.shape, []).append(i)
        for idx in by_shape.values():
            for lo in range(0, len(idx), self.batch):
                part = idx[lo : lo + self.batch]
                fmaps = self.maps(np.stack([wholes[i] for i in part]))  # type: ignore[misc]
                for i, fmap in zip(part, fmaps, strict=True):
                    out[i] = fmap
        return out

    def embed(self, views: list[RegionViews]) -> list[RegionVectors]:
        small: list[np.ndarray] = []
        spans: list[tuple[int, int]] = []
        for v in views:
            start = len(small)
            if v.thumb is not None:
                small.append(v.thumb)
            if v.cells is not None:
                small.extend(v.cells)
            spans.append((start, len(small)))
        vecs = self._embed(small)
        fmaps = self._maps([v.whole for v in views])
        out: list[RegionVectors] = []
        for v, (lo, hi), fmap in zip(views, spans, fmaps, strict=True):
            if v.thumb is not None and fmap is not None:
                out.append(stored_parts(v, vecs[lo], fmap))
            else:
                out.append(query_cells(v, vecs[lo:hi] if v.cells is not None else None, fmap))
        return out
