"""Builds a model's ONNX graphs from its torch network: fp32, then static int8 from the fp32.

fp32: the torch network (base.network, the same weights torch runs) through the TorchScript
exporter, then ONNX Runtime's quantization pre-processing, which folds EfficientNet's
"static same" padding subgraphs into plain Conv pads and infers every shape.
int8: static QDQ quantization calibrated on the shipped photos (calibration/), per-channel
int8 weights and asymmetric uint8 activations with MinMax ranges, the model module's
int8_fp32_nodes left in fp32. The figures behind these choices are in docs/model-runtimes.md.
Only onnx_runtime.py calls this, on a cache miss: torch is imported for building only.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from image_search.config import ModelSettings
from image_search.embedding import ModelCard, calibration
from image_search.embedding.base import network
from image_search.embedding.pixels import Normaliser

logger = logging.getLogger(__name__)

INPUT, OUTPUT = "input", "features"
OPSET = 17
CALIBRATION_BATCH = 8


def export_fp32(card: ModelCard, weights: Path, cfg: ModelSettings, out: Path) -> None:
    """The card's network with these weights as an fp32 graph: float (N,3,H,W) -> (N, dim)."""
    net = network(card, weights, cfg)
    example = torch.zeros(2, 3, card.spec.crop, card.spec.crop)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = Path(tmp) / "raw.onnx"
        # dynamo=False: the TorchScript exporter handles these eager modules as they are and
        # needs no onnxscript; the batch axis stays dynamic.
        torch.onnx.export(
            net, (example,), str(raw), input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )  # fmt: skip
        quant_pre_process(str(raw), str(out))
    for w in caught:  # the exporter's notes on constant folding: expected, not actionable
        logger.debug("onnx export: %s", w.message)


class _QuantizerNotes(logging.Filter):
    """onnxruntime.quantization logs a line per rescaled bias to the root logger at INFO
    (dozens per model): routine, so they go to debug instead of the service's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO and "onnxruntime" in record.pathname:
            logger.debug("quantizer: %s", record.getMessage())
            return False
        return True


class _Calibration(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no types
    """The calibration photos, normalised as in serving, in small batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches = batches
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT: batch}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def fp32_nodes(card: ModelCard, fp32: Path) -> list[str]:
    """The nodes the model module keeps in fp32 in its int8 build."""
    module = importlib.import_module(card.module)
    keep: list[str] = module.int8_fp32_nodes(onnx.load(str(fp32)).graph)
    return keep


def quantize_int8(
    card: ModelCard, fp32: Path, out: Path, keep_fp32: list[str] | None = None
) -> None:
    """Static QDQ int8 from the fp32 graph (keep_fp32: the model module's choice unless given)."""
    keep = fp32_nodes(card, fp32) if keep_fp32 is None else keep_fp32
    normalise = Normaliser(card.mean, card.std)
    pixels = calibration.pixels(card.spec)
    batches = [
        normalise(pixels[i : i + CALIBRATION_BATCH])
        for i in range(0, len(pixels), CALIBRATION_BATCH)
    ]
    notes = _QuantizerNotes()
    logging.getLogger().addFilter(notes)
    try:
        _quantize(fp32, out, batches, keep)
    finally:
        logging.getLogger().removeFilter(notes)
    logger.info("int8 %s: %d nodes kept in fp32, %d calibration photos", card.name, len(keep),
                len(pixels))  # fmt: skip


def _quantize(fp32: Path, out: Path, batches: list[np.ndarray], keep: list[str]) -> None:
    quantize_static(
        str(fp32), str(out), _Calibration(batches),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        # Full 8-bit range: VNNI does not saturate, which is why auto picks int8 only there.
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False},
    )  # fmt: skip
