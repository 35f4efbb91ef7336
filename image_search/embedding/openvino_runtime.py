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
from pathlib import Path

import numpy as np
import openvino as ov

from image_search.config import ModelSettings
from image_search.embedding import ModelCard
from image_search.embedding.onnx_runtime import ensure_graph
from image_search.embedding.pixels import Normaliser, unit_rows
from image_search.embedding.runtime import RuntimeChoice, model_id
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


class OpenVinoEmbedder:
    """Runs the fp32 ONNX graph (normalised (N,3,H,W) float32 -> (N, dim)) under OpenVINO."""

    def __init__(self, path: Path, cfg: ModelSettings, card: ModelCard, choice: RuntimeChoice):
        if choice.precision not in HINTS:  # runtime.check_pair refuses it earlier
            raise ConfigError(f"OpenVINO runs fp32 or bf16, not {choice.precision}")
        core = ov.Core()
        model = core.read_model(str(path))
        self.fp32_convs = card.bf16_fp32_convs if choice.precision == "bf16" else 0
        parts: list[tuple[ov.Model, str]] = [(model, choice.precision)]
        if self.fp32_convs:
            head, rest = split_before_conv(model, self.fp32_convs)
            parts = [(head, "fp32"), (rest, choice.precision)]
        self._compiled = [
            core.compile_model(part, "CPU", compile_config(cfg.threads, precision))
            for part, precision in parts
        ]
        # One infer request per part, reused: the Embedder may call from two threads (batch
        # and region views), and a request runs one inference at a time.
        self._requests = [c.create_infer_request() for c in self._compiled]
        self._outputs = [c.output(0) for c in self._compiled]
        self._lock = threading.Lock()
        self.path = path
        self.choice = choice
        self.model_id = model_id(card.name, choice)
        self.dim = card.dim
        self.spec = card.spec
        self._normalise = Normaliser(card.mean, card.std)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        x = self._normalise(batch)
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            for request, output in zip(self._requests, self._outputs, strict=True):
                # Shared, not copied: the head's output buffer is the rest's input, and
                # unit_rows makes a new array before any buffer is reused.
                x = request.infer({0: x}, share_inputs=True, share_outputs=True)[output]
            return unit_rows(x)


def load(cfg: ModelSettings, card: ModelCard, choice: RuntimeChoice) -> OpenVinoEmbedder:
    path = ensure_graph(cfg, card, "fp32")
    logger.info("%s:%s compiles %s with OpenVINO %s", card.name, choice.tag, path,
                ov.get_version())  # fmt: skip
    return OpenVinoEmbedder(path, cfg, card, choice)
