"""Retrieval quality and speed of fp32 vs bf16 on real photos, side by side in one process.

Before a faster precision can become a default it must find the same near-duplicates: 20 real
photos, 10 edits each (bench/edits.py), top-1 recall by exact search, plus how far bf16 vectors
move from fp32 ones and how much of the top-10 neighbourhood they keep.
    python -m bench.quality [--model efficientnet-lite0]
"""

from __future__ import annotations

import argparse
import io
import logging
import time

import numpy as np
from PIL import Image

from bench.edits import EDITS
from bench.photos import real_photos, to_jpeg

logger = logging.getLogger("bench.quality")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from image_search.config import ModelSettings
    from image_search.embedding import load_embedder, model_card
    from image_search.imaging import decode

    spec = model_card(args.model).spec
    photos = real_photos()
    originals = np.stack([decode(to_jpeg(a), spec, 10**8).pixels for a in photos.values()])
    queries, truth = [], []
    for i, arr in enumerate(photos.values()):
        im = Image.open(io.BytesIO(to_jpeg(arr))).convert("RGB")
        for edit in EDITS.values():
            queries.append(decode(edit(im), spec, 10**8).pixels)
            truth.append(i)
    q = np.stack(queries)

    results = {}
    for precision in ("fp32", "bf16"):
        emb = load_embedder(
            ModelSettings(name=args.model, precision=precision, threads=args.threads)  # type: ignore[arg-type]
        )
        emb.embed(originals[:16])
        t0 = time.perf_counter()
        base = np.concatenate(
            [emb.embed(originals[i : i + 16]) for i in range(0, len(originals), 16)]
        )
        qv = np.concatenate([emb.embed(q[i : i + 16]) for i in range(0, len(q), 16)])
        rate = (len(base) + len(qv)) / (time.perf_counter() - t0)
        dist = ((qv[:, None, :] - base[None, :, :]) ** 2).sum(-1)
        top1 = float((dist.argmin(1) == np.asarray(truth)).mean())
        results[precision] = (base, qv, rate, top1)

    b32, q32, r32, t32 = results["fp32"]
    b16, q16, r16, t16 = results["bf16"]
    cos = (q32 * q16).sum(1)
    allv32, allv16 = np.concatenate([b32, q32]), np.concatenate([b16, q16])
    nn32 = np.argsort(((allv32[:, None] - allv32[None]) ** 2).sum(-1), 1)[:, 1:11]
    nn16 = np.argsort(((allv16[:, None] - allv16[None]) ** 2).sum(-1), 1)[:, 1:11]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nn32, nn16, strict=True)])
    logger.info("%s: %d originals, %d edited queries", args.model, len(b32), len(q32))
    logger.info("fp32: top-1 %.3f, %.1f img/s", t32, r32)
    logger.info("bf16: top-1 %.3f, %.1f img/s   speed ratio %.2f", t16, r16, r16 / r32)
    logger.info("bf16 vs fp32 vectors: cosine mean %.4f (min %.4f); top-10 overlap %.2f",
                cos.mean(), cos.min(), overlap)  # fmt: skip


if __name__ == "__main__":
    main()
