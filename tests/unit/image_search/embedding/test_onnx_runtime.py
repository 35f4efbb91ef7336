"""resnet50 on ONNX Runtime and OpenVINO: the fp32 export computes what torch computes.

The checkpoint is a seeded torchvision ResNet50 init written by the test: it tests the export
(every tensor, the GeM + L2 tail), not a model anyone should run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image

from image_search.config import ModelSettings
from image_search.embedding import load_embedder, model_card, onnx_runtime
from image_search.embedding.resnet import int8_fp32_nodes
from image_search.imaging import resize_crop

CARD = model_card("resnet50")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet-onnx") / "resnet50-torchvision.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


def settings(checkpoint: Path, runtime: str, precision: str = "fp32") -> ModelSettings:
    return ModelSettings.model_validate(
        {"name": "resnet50", "weights": str(checkpoint), "threads": 2, "runtime": runtime,
         "precision": precision, "cache_dir": str(checkpoint.parent / "cache")}
    )  # fmt: skip


def test_onnx_fp32_equals_torch_fp32(checkpoint: Path) -> None:
    raw = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.rocket()]  # type: ignore[no-untyped-call]
    photos = np.stack([resize_crop(Image.fromarray(a), CARD.spec) for a in raw])
    torch_model = load_embedder(settings(checkpoint, "torch"))
    onnx_model = load_embedder(settings(checkpoint, "onnx"))
    assert torch_model.model_id == "resnet50:torch-fp32"
    assert onnx_model.model_id == "resnet50:onnx-fp32"
    expected, got = torch_model.embed(photos), onnx_model.embed(photos)
    assert got.shape == expected.shape == (3, 512) and got.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # Batch size is a dynamic axis: one image alone gives the same vector.
    np.testing.assert_allclose(onnx_model.embed(photos[1:2])[0], got[1], atol=1e-5, rtol=0)
    assert onnx_model.embed(photos[:0]).shape == (0, 512)
    # OpenVINO compiles the same graph and computes the same.
    openvino_model = load_embedder(settings(checkpoint, "openvino"))
    assert openvino_model.model_id == "resnet50:openvino-fp32"
    np.testing.assert_allclose(openvino_model.embed(photos), got, atol=1e-4, rtol=0)

    # The int8 recipe finds its cut in this graph: stem and layer1, then the last conv onwards.
    graph = onnx.load(str(onnx_runtime.ensure_graph(settings(checkpoint, "onnx"), CARD, "fp32")))
    keep = int8_fp32_nodes(graph.graph)
    assert keep[0] == "/features/features.0/Conv" and keep[-1] == "/Div"
    assert not any("features.5" in name or "features.6" in name for name in keep)
