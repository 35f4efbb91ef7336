"""Embedding throughput: batched vs one image at a time, malloc tuning, bf16; side by side.

Each configuration runs in its own process (malloc settings are read at process start), on the
same preprocessed real photos; the ratios against the first row are what to compare.
    python -m bench.embedding [--images 96] [--model efficientnet-lite0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np

from image_search.embedding import ALLOCATOR_ENV

logger = logging.getLogger("bench.embedding")
CONFIGS = [
    ("one image per call (baseline)", 1, "fp32", False),
    ("batch 16", 16, "fp32", False),
    ("batch 16 + malloc tuning (serve_config.yaml)", 16, "fp32", True),
    ("batch 16 + malloc tuning + bf16", 16, "bf16", True),
]


def _worker(model: str, batch: int, precision: str, images: int, threads: int) -> float:
    from bench.photos import distinct_images
    from image_search.config import ModelSettings
    from image_search.embedding import load_embedder, model_card
    from image_search.imaging import decode

    spec = model_card(model).spec
    pixels = np.stack([decode(b, spec, 10**8).pixels for b in distinct_images(images)])
    emb = load_embedder(ModelSettings(name=model, precision=precision, threads=threads))  # type: ignore[arg-type]
    emb.embed(pixels[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, images, batch):
        emb.embed(pixels[i : i + batch])
    return images / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        batch, precision, _ = args.worker
        rate = _worker(args.model, int(batch), precision, args.images, args.threads)
        sys.stdout.write(json.dumps({"img_s": rate}) + "\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for label, batch, precision, tuned in CONFIGS:
        env = {**os.environ, **(ALLOCATOR_ENV if tuned else {})}
        if not tuned:
            for key in ALLOCATOR_ENV:
                env.pop(key, None)
        out = subprocess.run(
            [sys.executable, "-m", "bench.embedding", "--images", str(args.images),
             "--model", args.model, "--threads", str(args.threads),
             "--worker", str(batch), precision, "x"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append((label, json.loads(out.stdout.strip().splitlines()[-1])["img_s"]))
    base = rows[0][1]
    logger.info("%s, %d real photos, %d threads", args.model, args.images, args.threads)
    for label, rate in rows:
        logger.info("%-48s %7.1f img/s   ratio %.2f", label, rate, rate / base)


if __name__ == "__main__":
    main()
