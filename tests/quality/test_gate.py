"""The quality gate: a faster configuration may serve only if it finds what fp32 finds.

On photos the int8 build never saw (gate.py): fp32's near-duplicate top-1 on whole photos with
the 10 edits, at most 1 point less on edited crops searched among crops of the same photos
(the spread the sweep in docs/model-runtimes.md saw between equally good builds), and >= 95%
of fp32's top-10 neighbours. runtime.resolve makes int8 or OpenVINO's bf16 the default only
where this passes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image_search.embedding import load_embedder, onnx_build, runtime
from image_search.embedding.onnx_runtime import OnnxEmbedder
from image_search.embedding.openvino_runtime import OpenVinoEmbedder
from image_search.embedding.runtime import BF16_FLAGS, INT8_FLAGS
from tests.quality.conftest import MODEL, gate_settings
from tests.quality.gate import GateSet, Vectors, top1, top10_overlap, vectors, vectors_in_child

MIN_TOP10_OVERLAP = 0.95
MAX_CROP_TOP1_LOSS = 0.01


def has(flags: tuple[str, ...]) -> bool:
    return any(f in runtime.cpu_flags() for f in flags)


def assert_passes(candidate: Vectors, fp32: Vectors, data: GateSet) -> None:
    got, ref = top1(candidate, data), top1(fp32, data)
    overlap = top10_overlap(candidate, fp32)
    figures = f"top-1 {got} vs fp32 {ref}, top-10 overlap {overlap:.3f}"
    assert got["photos"] >= ref["photos"], figures
    assert got["crops"] >= ref["crops"] - MAX_CROP_TOP1_LOSS, figures
    assert overlap >= MIN_TOP10_OVERLAP, figures


def test_onnx_fp32_equals_torch_fp32(
    onnx_models: dict[str, OnnxEmbedder], gate_data: GateSet
) -> None:
    torch_fp32 = load_embedder(gate_settings("torch", "fp32"))
    pixels = gate_data.gallery[::25]  # whole photos and crops
    expected, got = torch_fp32.embed(pixels), onnx_models["fp32"].embed(pixels)
    assert got.shape == expected.shape and got.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_openvino_fp32_equals_onnx_fp32(
    onnx_models: dict[str, OnnxEmbedder], gate_data: GateSet, model_cache: Path
) -> None:
    openvino = load_embedder(gate_settings("openvino", "fp32", cache_dir=str(model_cache)))
    pixels = gate_data.gallery[::25]
    expected, got = onnx_models["fp32"].embed(pixels), openvino.embed(pixels)
    assert got.shape == expected.shape and got.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.skipif(not has(BF16_FLAGS), reason="no bf16 instructions: OpenVINO refuses bf16")
def test_openvino_bf16_passes_the_gate(
    gate_data: GateSet, fp32_vectors: Vectors, model_cache: Path
) -> None:
    bf16 = load_embedder(gate_settings("openvino", "bf16", cache_dir=str(model_cache)))
    assert bf16.model_id == f"{MODEL}:openvino-bf16"
    assert_passes(vectors(bf16.embed, gate_data), fp32_vectors, gate_data)


@pytest.mark.skipif(not has(INT8_FLAGS), reason="no VNNI/AMX: int8 is never the default here")
def test_int8_passes_the_gate(
    onnx_models: dict[str, OnnxEmbedder], gate_data: GateSet, fp32_vectors: Vectors
) -> None:
    int8 = onnx_models["int8"]
    assert int8.model_id == f"{MODEL}:onnx-int8"
    assert_passes(vectors(int8.embed, gate_data), fp32_vectors, gate_data)


@pytest.mark.skipif(not has(BF16_FLAGS), reason="no bf16 instructions: bf16 is emulated here")
def test_bf16_passes_the_gate(gate_data: GateSet, fp32_vectors: Vectors, tmp_path: Path) -> None:
    bf16 = gate_settings("torch", "bf16")
    assert_passes(vectors_in_child(bf16, gate_data, 16, tmp_path), fp32_vectors, gate_data)


def test_a_cached_model_loads_without_building(
    onnx_models: dict[str, OnnxEmbedder], model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt a cached graph")

    monkeypatch.setattr(onnx_build, "export_fp32", never)
    monkeypatch.setattr(onnx_build, "quantize_int8", never)
    for precision, built in onnx_models.items():
        again = load_embedder(gate_settings("onnx", precision, cache_dir=str(model_cache)))
        assert isinstance(again, OnnxEmbedder) and again.path == built.path
    # OpenVINO compiles the cached fp32 graph itself.
    openvino = load_embedder(gate_settings("openvino", "fp32", cache_dir=str(model_cache)))
    assert isinstance(openvino, OpenVinoEmbedder) and openvino.path == onnx_models["fp32"].path
