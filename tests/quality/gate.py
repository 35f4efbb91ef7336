"""The quality gate's data and measures: a faster precision must find what fp32 finds.

Photos: bench/photos.py's real photos minus those the int8 calibration set was cut from, so
the gate never scores a model on its own calibration data.
- near-duplicates: every photo and some crops of it, each edited the 10 ways of bench/edits.py,
  searched among all the originals and crops; top-1 = the unedited image comes first;
- neighbourhoods: the top-10 neighbours of every gallery image and query, compared with fp32's.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.edits import EDITS
from bench.photos import real_photos
from image_search.config import ModelSettings
from image_search.embedding import ALLOCATOR_ENV, calibration, load_embedder
from image_search.imaging import PreprocessSpec, decode

Embed = Callable[[np.ndarray], np.ndarray]
MAX_PIXELS = 10**8


@dataclass(frozen=True)
class GateSet:
    gallery: np.ndarray  # (G, crop, crop, 3) uint8: the originals, then crops of them
    queries: np.ndarray  # (Q, crop, crop, 3) uint8: edited copies of gallery images
    truth: np.ndarray  # (Q,) index in gallery of each query's unedited image
    originals: int  # queries[:originals * len(EDITS)] are edits of whole photos


def gate_photos() -> dict[str, np.ndarray]:
    held_out = calibration.source_photos()
    return {k: v for k, v in real_photos().items() if k not in held_out}


def _jpeg(im: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return w * h / (area - w * h)


def _crops(im: Image.Image, n: int, rng: np.random.Generator) -> list[Image.Image]:
    """n crops of 20-70% of the short side (none is the whole photo again), IoU < 0.35."""
    width, height = im.size
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(5000):
        if len(boxes) == n:
            break
        side = rng.uniform(0.2, 0.7) * min(width, height)
        aspect = rng.uniform(0.75, 1.4)
        w, h = min(width, side * aspect**0.5), min(height, side / aspect**0.5)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box = (int(x), int(y), int(x + w), int(y + h))
        if all(_overlap(box, b) < 0.35 for b in boxes):
            boxes.append(box)
    return [im.crop(b) for b in boxes]


def gate_set(spec: PreprocessSpec, crops_per_photo: int, edited_crops_per_photo: int) -> GateSet:
    rng = np.random.default_rng(0)
    originals, crops, queries, truth = [], [], [], []
    crop_images: list[tuple[int, Image.Image]] = []
    photos = gate_photos()
    for arr in photos.values():
        im = Image.open(io.BytesIO(_jpeg(Image.fromarray(arr)))).convert("RGB")
        originals.append(decode(_jpeg(im), spec, MAX_PIXELS).pixels)
        for edit in EDITS.values():
            queries.append(decode(edit(im), spec, MAX_PIXELS).pixels)
            truth.append(len(originals) - 1)
        for i, c in enumerate(_crops(im, crops_per_photo, rng)):
            crops.append(decode(_jpeg(c, 95), spec, MAX_PIXELS).pixels)
            if i < edited_crops_per_photo:
                crop_images.append((len(crops) - 1, c))
    for index, c in crop_images:
        for edit in EDITS.values():
            queries.append(decode(edit(c), spec, MAX_PIXELS).pixels)
            truth.append(len(photos) + index)
    return GateSet(np.stack(originals + crops), np.stack(queries), np.array(truth), len(photos))


def embed_all(embed: Embed, pixels: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([embed(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])


@dataclass(frozen=True)
class Vectors:
    gallery: np.ndarray
    queries: np.ndarray


def vectors(embed: Embed, data: GateSet) -> Vectors:
    return Vectors(embed_all(embed, data.gallery), embed_all(embed, data.queries))


def vectors_in_child(cfg: ModelSettings, data: GateSet, batch: int, tmp: Path) -> Vectors:
    """vectors() in a child process with the allocator settings every embedding process gets.

    glibc reads them only at process start, and without them torch eager (bf16 above all)
    spends most of its time mapping and unmapping buffers: the test would time the allocator.
    """
    np.save(tmp / "gallery.npy", data.gallery)
    np.save(tmp / "queries.npy", data.queries)
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "tests.quality.gate", cfg.model_dump_json(), str(tmp), str(batch)]
    subprocess.run(cmd, env={**os.environ, **ALLOCATOR_ENV}, cwd=root, check=True, timeout=900)
    return Vectors(np.load(tmp / "gallery.vectors.npy"), np.load(tmp / "queries.vectors.npy"))


def _child(cfg_json: str, folder: str, batch: str) -> None:
    embed = load_embedder(ModelSettings.model_validate_json(cfg_json)).embed
    for part in ("gallery", "queries"):
        pixels = np.load(Path(folder) / f"{part}.npy")
        np.save(Path(folder) / f"{part}.vectors.npy", embed_all(embed, pixels, int(batch)))


def _top(queries: np.ndarray, gallery: np.ndarray, k: int, skip_self: bool) -> np.ndarray:
    sims = queries @ gallery.T
    if skip_self:
        np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def top1(v: Vectors, data: GateSet) -> dict[str, float]:
    """Share of queries whose unedited image is the nearest: of whole photos, of crops."""
    hit = _top(v.queries, v.gallery, 1, False)[:, 0] == data.truth
    whole = data.originals * len(EDITS)
    return {"photos": float(hit[:whole].mean()), "crops": float(hit[whole:].mean())}


def top10_overlap(v: Vectors, ref: Vectors) -> float:
    """Mean share of fp32's 10 nearest gallery images that v also has among its 10 nearest."""

    def neighbours(x: Vectors) -> np.ndarray:
        return np.concatenate(
            [_top(x.gallery, x.gallery, 10, True), _top(x.queries, x.gallery, 10, False)]
        )

    mine, theirs = neighbours(v), neighbours(ref)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(mine, theirs, strict=True)]))


if __name__ == "__main__":
    _child(*sys.argv[1:])
