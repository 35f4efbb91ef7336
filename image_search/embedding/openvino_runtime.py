"""The OpenVINO runtime: the cached ONNX fp32 graph compiled by OpenVINO's CPU plugin.

It reads the very graph the onnx runtime builds (onnx_runtime.ensure_graph), so nothing is
exported twice and nothing is downloaded. fp32 runs it as it is. bf16 is OpenVINO's inference
precision hint: convolutions take bfloat16 inputs on the CPU's bf16 instructions (AVX-512 BF16,
AMX) and accumulate in fp32. A model's card may keep its first convolutions in fp32
(`bf16_fp32_convs`): the graph is then cut in two, the head compiled in fp32 and the rest in
bf16, because the CPU plugin ignores per-node precision marks in bf16 mode. On EfficientNet-Lite0
that is what passes the quality gate, and it is the fastest configuration measured on a CPU
with bf16 instructions (docs/model-runtimes.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov

from image_search.config import ModelSettings
from image_search.embedding import ModelCard
from image_search.embedding.onnx_runtime import GraphEmbedder, ensure_graph
from image_search.embedding.pixels import unit_rows
from image_search.embedding.runtime import RuntimeChoice
from image_search.errors import ConfigError

logger = logging.getLogger(__name__)

HINTS = {"fp32": "f32", "bf16": "bf16"}


def compile_config(threads: int, precision: str) -> dict[str, object]:
    """The CPU plugin's settings: one stream of `threads` threads, as ONNX Runtime gets."""
    return {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": HINTS[precision],
        # Pinned threads would keep the Decoder, on the same node, off their cores.
        "ENABLE_CPU_PINNING": False,
    }


def split_before_conv(model: ov.Model, index: int) -> tuple[ov.Model, ov.Model]:
    """The graph cut at the data input of its convolution number `index` (0-based, in
    topological order): (everything before, everything from there on). Raises ValueError
    where a later node also reads something before the cut (a skip connection across it).
    It rewires `model` itself: read a fresh one for each cut."""
    convs = [n for n in model.get_ordered_ops()
             if n.get_type_name() in ("Convolution", "GroupConvolution")]  # fmt: skip
    cut = convs[index].input(0).get_source_output()
    joint = ov.op.Parameter(cut.get_element_type(), cut.get_partial_shape())
    for consumer in list(cut.get_target_inputs()):
        consumer.replace_source_output(joint.output(0))
    try:
        rest = ov.Model(model.get_results(), [joint], "rest")
    except RuntimeError as exc:  # "Model references undeclared parameters": the old input
        raise ValueError(f"convolution {index} is not a cut point: a later node skips it") from exc
    return ov.Model([cut], model.get_parameters(), "head"), rest


def tensor(model: ov.Model, name: str) -> ov.Output:
    """The output, among the model's nodes, that carries the ONNX tensor `name`."""
    for node in model.get_ordered_ops():
        for out in node.outputs():
            if name in out.get_names():
                return out
    raise ConfigError(f"the graph has no tensor {name!r}")


class _Compiled:
    """A graph compiled at a precision, cut in two first where fp32_convs > 0, run behind a
    lock: one infer request per part, reused (a request runs one inference at a time)."""

    def __init__(self, model: ov.Model, threads: int, precision: str, fp32_convs: int) -> None:
        core = ov.Core()
        parts: list[tuple[ov.Model, str]] = [(model, precision)]
        if fp32_convs:
            head, rest = split_before_conv(model, fp32_convs)
            parts = [(head, "fp32"), (rest, precision)]
        compiled = [core.compile_model(m, "CPU", compile_config(threads, p)) for m, p in parts]
        self._requests = [c.create_infer_request() for c in compiled]
        self._outputs = [c.output(0) for c in compiled]
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray, keep: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The last part's output through `keep`, which must copy it: the buffer is reused."""
        with self._lock:
            for request, output in zip(self._requests, self._outputs, strict=True):
                # Shared, not copied: the head's output buffer is the rest's input.
                x = request.infer({0: x}, share_inputs=True, share_outputs=True)[output]
            return keep(x)


class OpenVinoEmbedder(GraphEmbedder):
    """Runs the fp32 ONNX graph (normalised (N,3,H,W) float32 -> (N, dim)) under OpenVINO."""

    def __init__(self, path: Path, cfg: ModelSettings, card: ModelCard, choice: RuntimeChoice):
        if choice.precision not in HINTS:  # runtime.check_pair refuses it earlier
            raise ConfigError(f"OpenVINO runs fp32 or bf16, not {choice.precision}")
        super().__init__(path, card, choice)
        self.fp32_convs = card.bf16_fp32_convs if choice.precision == "bf16" else 0
        self.threads = cfg.threads
        # The Embedder may call from two threads (batch and region views): _Compiled locks.
        self._run = _Compiled(ov.Core().read_model(str(path)), cfg.threads, choice.precision,
                              self.fp32_convs)  # fmt: skip

    def _forward(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, unit_rows)  # unit_rows makes a new array

    def feature_maps(self, map_name: str) -> Callable[[np.ndarray], np.ndarray]:
        """normalised (N,3,H,W) float32 -> the (N,C,h,w) tensor `map_name` (the map GeM pools,
        feature_maps.gem_map_name), for inputs of any height and width (region search's
        whole-image pass), computed as embed() computes: same graph, precision and cut. The
        graph has no shape-dependent op (padding is folded into the convs), so its spatial
        dimensions can be freed."""
        model = ov.Core().read_model(str(self.path))
        trunk = ov.Model([tensor(model, map_name)], model.get_parameters(), "feature-map")
        trunk.reshape({0: ov.PartialShape([-1, 3, -1, -1])})
        run = _Compiled(trunk, self.threads, self.choice.precision, self.fp32_convs)
        return lambda x: run(x, lambda fmap: np.array(fmap, dtype=np.float32))


def load(cfg: ModelSettings, card: ModelCard, choice: RuntimeChoice) -> OpenVinoEmbedder:
    path = ensure_graph(cfg, card, "fp32")
    logger.info("%s:%s compiles %s with OpenVINO %s", card.name, choice.tag, path,
                ov.get_version())  # fmt: skip
    return OpenVinoEmbedder(path, cfg, card, choice)
