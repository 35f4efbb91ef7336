"""Embedding throughput per runtime, precision and batch size, side by side.

Each configuration runs in its own process (malloc settings are read at process start), on the
same preprocessed real photos, and reports its best of --passes passes over them (a shared
2-core machine slows single passes at random); the ratios against the first row are what to
compare. `*` marks what `model.runtime: auto` / `model.precision: auto` resolve to on this
machine (the default).
    python -m bench.embedding [--images 96] [--passes 3] [--model efficientnet-lite0]
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
from image_search.errors import ConfigError

logger = logging.getLogger("bench.embedding")
# (label, batch, runtime, precision, allocator settings of serve_config.yaml)
CONFIGS = [
    ("torch fp32, one image per call (baseline)", 1, "torch", "fp32", False),
    ("torch fp32, batch 16", 16, "torch", "fp32", False),
    ("torch fp32, batch 16 + malloc tuning", 16, "torch", "fp32", True),
    ("torch fp32, batch 1 + malloc tuning", 1, "torch", "fp32", True),
    ("torch bf16, batch 1", 1, "torch", "bf16", True),
    ("torch bf16, batch 16", 16, "torch", "bf16", True),
    ("onnx fp32, batch 1", 1, "onnx", "fp32", True),
    ("onnx fp32, batch 16", 16, "onnx", "fp32", True),
    ("onnx int8, batch 1", 1, "onnx", "int8", True),
    ("onnx int8, batch 16", 16, "onnx", "int8", True),
    ("openvino fp32, batch 16", 16, "openvino", "fp32", True),
    ("openvino bf16, batch 1", 1, "openvino", "bf16", True),
    ("openvino bf16, batch 16", 16, "openvino", "bf16", True),
]


def _worker(
    model: str, batch: int, runtime: str, precision: str, images: int, threads: int, passes: int
) -> float:
    from bench.photos import distinct_images
    from image_search.config import ModelSettings
    from image_search.embedding import load_embedder, model_card
    from image_search.imaging import decode

    spec = model_card(model).spec
    pixels = np.stack([decode(b, spec, 10**8).pixels for b in distinct_images(images)])
    cfg = ModelSettings.model_validate(
        {"name": model, "runtime": runtime, "precision": precision, "threads": threads}
    )
    emb = load_embedder(cfg)  # an ONNX graph is built into model.cache_dir on the first run
    emb.embed(pixels[:batch])  # warm-up
    best = 0.0
    for _ in range(passes):
        start = time.perf_counter()
        for i in range(0, images, batch):
            emb.embed(pixels[i : i + batch])
        best = max(best, images / (time.perf_counter() - start))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        batch, runtime, precision = args.worker
        rate = _worker(
            args.model, int(batch), runtime, precision, args.images, args.threads, args.passes
        )
        sys.stdout.write(json.dumps({"img_s": rate}) + "\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from image_search.config import ModelSettings

    default = ModelSettings.model_validate({"name": args.model}).runtime_choice()
    rows: list[tuple[str, float | None]] = []
    for label, batch, runtime, precision, tuned in CONFIGS:
        refused = refusal(args.model, runtime, precision)
        if refused:
            # E.g. OpenVINO bf16 on a CPU without bf16 instructions: the service refuses it
            # too, so there is nothing to measure (and its worker would exit with the error).
            rows.append((f" {label}: refused on this CPU ({refused})", None))
            continue
        env = {**os.environ, **(ALLOCATOR_ENV if tuned else {})}
        if not tuned:
            for key in ALLOCATOR_ENV:
                env.pop(key, None)
        out = subprocess.run(
            [sys.executable, "-m", "bench.embedding", "--images", str(args.images),
             "--model", args.model, "--threads", str(args.threads),
             "--passes", str(args.passes),
             "--worker", str(batch), runtime, precision],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        is_default = (runtime, precision) == (default.runtime, default.precision) and tuned
        mark = "*" if is_default else " "
        rows.append((mark + label, json.loads(out.stdout.strip().splitlines()[-1])["img_s"]))
    base = rows[0][1]
    logger.info("%s, %d real photos, best of %d passes, %d threads; * = the default here (%s: %s)",
                args.model, args.images, args.passes, args.threads, default.tag,
                default.reason)  # fmt: skip
    for label, rate in rows:
        if rate is None or base is None:
            logger.info("%s", label)
        else:
            logger.info("%-46s %7.1f img/s   ratio %.2f", label, rate, rate / base)


def refusal(model: str, runtime: str, precision: str) -> str | None:
    """Why the service (and this benchmark's worker) would refuse this runtime and precision
    on this CPU; None if it runs. The settings are checked as the worker checks them."""
    from image_search.config import ModelSettings

    try:
        ModelSettings.model_validate(
            {"name": model, "runtime": runtime, "precision": precision}
        ).runtime_choice()
    except ConfigError as exc:
        return str(exc)
    return None


if __name__ == "__main__":
    main()
