"""The OpenVINO runtime on EfficientNet-Lite0: the cut that keeps its first convolutions in
fp32, concurrent calls (the Embedder embeds batches and region views from two threads), and
the feature map region search pools."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from image_search.config import ModelSettings
from image_search.embedding import load_embedder, model_card, runtime
from image_search.embedding.feature_maps import load_feature_maps
from image_search.embedding.onnx_runtime import ensure_graph
from image_search.embedding.openvino_runtime import OpenVinoEmbedder, split_before_conv

CARD = model_card("efficientnet-lite0")
F32 = {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> ModelSettings:
    cache = tmp_path_factory.mktemp("openvino-cache")
    return ModelSettings.model_validate(
        {"name": CARD.name, "runtime": "openvino", "precision": "fp32", "threads": 2,
         "cache_dir": str(cache)}
    )  # fmt: skip


@pytest.fixture(scope="module")
def graph(settings: ModelSettings) -> Path:
    return ensure_graph(settings, CARD, "fp32")


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)


def test_the_two_parts_compute_the_whole(graph: Path) -> None:
    core = ov.Core()
    whole = core.compile_model(core.read_model(str(graph)), "CPU", F32)
    head, rest = (core.compile_model(m, "CPU", F32)
                  for m in split_before_conv(core.read_model(str(graph)), 3))  # fmt: skip
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    middle = head(x)[head.output(0)]
    assert middle.shape == (2, 16, 112, 112)  # block 0's output
    np.testing.assert_allclose(rest(middle)[rest.output(0)], whole(x)[whole.output(0)],
                               atol=1e-5, rtol=0)  # fmt: skip


def test_a_cut_across_a_skip_connection_is_refused(graph: Path) -> None:
    # Convolutions 6-8 are block 2 (24 -> 24 channels, stride 1): its input also feeds the
    # residual add after conv 8, so the graph cannot be cut before conv 7.
    with pytest.raises(ValueError, match="not a cut point"):
        split_before_conv(ov.Core().read_model(str(graph)), 7)
    split_before_conv(ov.Core().read_model(str(graph)), 6)  # the block's input: a cut point


def test_fp32_runs_whole_and_bf16_keeps_the_stem_in_fp32(settings: ModelSettings) -> None:
    fp32 = load_embedder(settings)
    assert isinstance(fp32, OpenVinoEmbedder) and fp32.fp32_convs == 0
    assert fp32.model_id == "efficientnet-lite0:openvino-fp32"
    if not any(f in runtime.cpu_flags() for f in runtime.BF16_FLAGS):
        pytest.skip("no bf16 instructions: runtime.resolve refuses OpenVINO bf16 here")
    bf16 = load_embedder(settings.model_copy(update={"precision": "bf16"}))
    assert isinstance(bf16, OpenVinoEmbedder) and bf16.fp32_convs == 3
    x = batch(4)
    got, ref = bf16.embed(x), fp32.embed(x)
    assert got.shape == (4, CARD.dim) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float((got * ref).sum(axis=1).min()) > 0.99  # close to fp32, not equal to it
    assert bf16.embed(x[:0]).shape == (0, CARD.dim)


def test_concurrent_calls_get_their_own_vectors(settings: ModelSettings) -> None:
    model = load_embedder(settings)
    inputs = [batch(3, seed) for seed in range(4)]
    alone = [model.embed(x) for x in inputs]
    got: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        for _ in range(3):
            got[i] = model.embed(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, expected in enumerate(alone):
        np.testing.assert_allclose(got[i], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_feature_map_is_the_one_embed_pools(settings: ModelSettings, precision: str) -> None:
    if precision == "bf16" and not any(f in runtime.cpu_flags() for f in runtime.BF16_FLAGS):
        pytest.skip("no bf16 instructions: runtime.resolve refuses OpenVINO bf16 here")
    model = load_embedder(settings.model_copy(update={"precision": precision}))
    assert isinstance(model, OpenVinoEmbedder)
    maps = load_feature_maps(model, CARD.name, settings.threads)
    x = batch(2, seed=3)
    fmap = maps(x)
    assert fmap.shape == (2, CARD.dim, 7, 7) and fmap.dtype == np.float32
    # GeM (p = 3) and L2 over the map give embed()'s vectors: the same graph, precision, cut.
    pooled = np.cbrt((np.maximum(fmap, 1e-6) ** 3).mean(axis=(2, 3)))
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, model.embed(x), atol=1e-4, rtol=0)
    # Any height and width: region search's whole-image pass is not square.
    assert maps(batch(1)[:, :, :160]).shape == (1, CARD.dim, 7, 5)
