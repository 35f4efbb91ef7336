"""resnet50 (iv2 ResNet47_50Net): both checkpoint layouts, strict key checks, parity with iv2."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import iv2
import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from iv2.model import ResNet47_50Net
from PIL import Image
from torch import nn

from image_search.config import ModelSettings
from image_search.embedding import load_embedder, model_card
from image_search.embedding.resnet import (
    ResNet47GeM,
    build_trunk,
    check_state,
    map_checkpoint,
)
from image_search.errors import ModelUnavailable
from image_search.imaging import resize_crop

SPEC = model_card("resnet50").spec

# Random weights are test data here only: they make every tensor distinct, so a tensor loaded
# into the wrong place cannot go unnoticed.

# torchvision child -> index in iv2's `features`, written out independently of the code under test.
TV_TO_IV2 = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def _randomise_batchnorm(model: nn.Module) -> None:
    """Default BN init is all ones/zeros: identical tensors would hide a mis-mapping."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def _settings(weights: str | None, tmp: Path, precision: str = "fp32") -> ModelSettings:
    return ModelSettings.model_validate(
        {
            "name": "resnet50",
            "weights": weights,
            "cache_dir": str(tmp / "cache"),
            "threads": 2,
            "runtime": "torch",  # these tests read the torch network's tensors
            "precision": precision,
        }
    )


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resnet")


@pytest.fixture(scope="module")
def iv2_ckpt(ckpt_dir: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """cnnimageretrieval layout, with the keys a real gl18-tl-resnet50-gem-w file also holds."""
    torch.manual_seed(0)
    net = ResNet47_50Net()
    _randomise_batchnorm(net)
    sd = dict(net.state_dict())
    sd["pool.p"] = torch.tensor([2.87])  # learned p: iv2 ignores it
    sd["whiten.weight"] = torch.randn(2048, 2048)
    sd["whiten.bias"] = torch.randn(2048)
    sd["features.7.2.conv3.weight"] = torch.randn(2048, 512, 1, 1)  # full ResNet50 block
    sd["features.7.2.bn3.weight"] = torch.randn(2048)
    meta = {"architecture": "resnet50", "pooling": "gem", "whitening": True, "outputdim": 2048}
    path = ckpt_dir / "gl18-like.pth"
    torch.save({"meta": meta, "state_dict": sd}, path)
    return path, sd


@pytest.fixture(scope="module")
def tv_ckpt(ckpt_dir: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    model = torchvision.models.resnet50()
    _randomise_batchnorm(model)
    sd = dict(model.state_dict())
    path = ckpt_dir / "resnet50-torchvision.pth"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Two real photos, resized and cropped the way the decoder does: (2, 224, 224, 3) uint8."""
    raw = [skimage.data.astronaut(), skimage.data.coffee()]  # type: ignore[no-untyped-call]
    ims = [Image.fromarray(a) for a in raw]
    return np.stack([resize_crop(im, SPEC) for im in ims])


def _iv2_input(batch: np.ndarray) -> torch.Tensor:
    """iv2's own preprocessing minus Resize/CenterCrop (the pixels are already 224x224)."""
    to_tensor_and_normalise = torchvision.transforms.Compose(iv2.preprocess.transforms[2:])
    return torch.stack([to_tensor_and_normalise(Image.fromarray(a)) for a in batch])


def test_cnnimageretrieval_layout_loads_every_tensor(
    iv2_ckpt: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    path, sd = iv2_ckpt
    emb = load_embedder(_settings(str(path), tmp_path))
    assert (emb.model_id, emb.dim, emb.spec) == ("resnet50:torch-fp32", 512, SPEC)
    ours = emb.network.state_dict()
    # Every parameter and buffer of iv2's network except its unused GeM p, nothing else.
    assert set(ours) == set(ResNet47_50Net().state_dict()) - {"pool.p"}
    for key, value in ours.items():
        assert torch.equal(value, sd[key]), key


def test_matches_iv2_forward_and_is_unit_norm(
    iv2_ckpt: tuple[Path, dict[str, torch.Tensor]], photos: np.ndarray, tmp_path: Path
) -> None:
    path, _ = iv2_ckpt
    emb = load_embedder(_settings(path.as_uri(), tmp_path))  # and by file:// URL
    ref_model = iv2.ResNet(runtime_model=path)
    ref = ref_model.images_to_vectors(_iv2_input(photos)).numpy()
    assert ref.shape == (2, 512)
    vecs = emb.embed(photos)
    assert vecs.shape == (2, 512) and vecs.dtype == np.float32
    np.testing.assert_allclose(vecs, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)
    # Two photos, two vectors (random deep nets map all inputs close together, hence the bound).
    assert np.abs(vecs[0] - vecs[1]).max() > 1e-3
    # The same tensor through both networks: our (N, 512) is iv2's (512, N) transposed.
    x = emb.to_tensor(photos[:1])
    with torch.inference_mode():
        np.testing.assert_allclose(
            emb.network(x).numpy(), ref_model.network(x).T.numpy(), atol=1e-6, rtol=0
        )


def test_torchvision_layout_maps_every_tensor(
    tv_ckpt: tuple[Path, dict[str, torch.Tensor]], photos: np.ndarray, tmp_path: Path
) -> None:
    path, sd = tv_ckpt
    emb = load_embedder(_settings(str(path), tmp_path))
    iv2_to_tv = {f"features.{i}.": f"{name}." for name, i in TV_TO_IV2.items()}
    ours = emb.network.state_dict()
    used = set()
    for key, value in ours.items():
        prefix = next(p for p in iv2_to_tv if key.startswith(p))
        tv_key = iv2_to_tv[prefix] + key[len(prefix) :]
        assert torch.equal(value, sd[tv_key]), (key, tv_key)
        used.add(tv_key)
    # Only the classifier and the half block's missing conv3/bn3 are left over.
    assert all(k.startswith(("fc.", "layer4.2.conv3.", "layer4.2.bn3.")) for k in set(sd) - used)

    # iv2's network given the same modules child by child (iv2 builds it from resnet50's
    # children), transposed, must give the same vectors.
    tv = torchvision.models.resnet50()
    tv.load_state_dict(sd)
    ref = ResNet47_50Net().eval()
    for name, i in TV_TO_IV2.items():
        result = ref.features[i].load_state_dict(getattr(tv, name).state_dict(), strict=False)
        assert result.missing_keys == []
        assert all(k.startswith(("2.conv3.", "2.bn3.")) for k in result.unexpected_keys)
    vecs = emb.embed(photos[:1])
    with torch.inference_mode():
        want = ref(_iv2_input(photos[:1])).T.numpy()
    np.testing.assert_allclose(vecs, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)


def _check(checkpoint: Any) -> None:
    state = map_checkpoint(checkpoint, source="test.pth")
    check_state(ResNet47GeM(build_trunk("meta")), state, source="test.pth")


def test_module_prefix_and_missing_counters_are_accepted(
    iv2_ckpt: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    _, sd = iv2_ckpt
    old_style = {"module." + k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    _check({"state_dict": old_style})


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"features.6.3.bn2.running_var": None}, "missing .*features.6.3.bn2.running_var"),
        ({"features.7.2.conv2.weight": None}, "missing .*features.7.2.conv2.weight"),
        ({"features.7.2.conv1.weight": torch.zeros(512, 1024, 1, 1)}, "wrong shape"),
        ({"features.6.6.conv1.weight": torch.zeros(256, 1024, 1, 1)}, "unexpected"),  # resnet101
    ],
)
def test_iv2_layout_rejects_bad_keys(
    iv2_ckpt: tuple[Path, dict[str, torch.Tensor]], change: dict[str, Any], expect: str
) -> None:
    _, sd = iv2_ckpt
    bad = dict(sd)
    for key, value in change.items():
        if value is None:
            del bad[key]
        else:
            bad[key] = value
    with pytest.raises(ModelUnavailable, match=expect):
        _check({"state_dict": bad})


@pytest.mark.parametrize(
    "key", ["layer4.2.conv2.weight", "bn1.running_mean", "layer1.0.conv1.weight"]
)
def test_torchvision_layout_rejects_missing_keys(
    tv_ckpt: tuple[Path, dict[str, torch.Tensor]], key: str
) -> None:
    _, sd = tv_ckpt
    bad = {k: v for k, v in sd.items() if k != key}
    with pytest.raises(ModelUnavailable, match="missing"):
        _check(bad)


def test_bad_checkpoint_file_end_to_end(
    tv_ckpt: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    _, sd = tv_ckpt
    bad = dict(sd)
    bad["layer3.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ModelUnavailable, match=r"wrong shape \(1\): features\.6\.0\.conv1\.weight"):
        load_embedder(_settings(str(path), tmp_path))
    path.write_bytes(b"garbage")
    with pytest.raises(ModelUnavailable, match="not a weights-only torch checkpoint"):
        load_embedder(_settings(str(path), tmp_path))
    torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(ModelUnavailable, match="expected a state dict"):
        load_embedder(_settings(str(path), tmp_path))


def test_pickled_objects_need_a_pinned_sha256(
    iv2_ckpt: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    _, sd = iv2_ckpt
    path = tmp_path / "with-args.pth"
    # Real training checkpoints often pickle their argparse options next to the weights.
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ModelUnavailable, match="weights_sha256"):
        load_embedder(_settings(str(path), tmp_path))
    cfg = _settings(str(path), tmp_path)
    cfg.weights_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_embedder(cfg).dim == 512


def test_no_weights_configured(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as err:
        load_embedder(_settings(None, tmp_path))
    for needle in ("gl18-tl-resnet50-gem-w-83fdc30.pth", "torchvision", "ISE__MODEL__WEIGHTS"):
        assert needle in err.value.message


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="no such file"):
        load_embedder(_settings(str(tmp_path / "absent.pth"), tmp_path))


def test_bf16_and_non_224_input(
    iv2_ckpt: tuple[Path, dict[str, torch.Tensor]], photos: np.ndarray, tmp_path: Path
) -> None:
    path, _ = iv2_ckpt
    fp32 = load_embedder(_settings(str(path), tmp_path))
    bf16 = load_embedder(_settings(str(path), tmp_path, precision="bf16"))
    assert bf16.model_id == "resnet50:torch-bf16"
    a, b = fp32.embed(photos[:1]), bf16.embed(photos[:1])
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float((a * b).sum()) > 0.98
    # Whole-map GeM pools all of a 9x9 map; iv2's fixed 7x7 window would not.
    big = np.repeat(np.repeat(photos[:1], 2, axis=1), 2, axis=2)[:, :288, :288]
    assert fp32.embed(big).shape == (1, 512)
