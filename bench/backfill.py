"""Backfill throughput against the embedding model alone, on the same real photos, one run.

Baseline: one process, load_embedder + a read/decode/embed loop in batches (no Ray, no stores).
Backfill: `python -m pipelines.backfill` on a fresh local Ray into fresh embedded stores (read,
hash, plan, decode, embed, write all three stores), with one embed actor (the baseline's
compute) and then one per core. Both include loading the model; the backfill's figure is its
own report (listing to final flush) and leaves out starting Ray and the Milvus Lite server,
which a cluster and a running service already have. Its rate after the first results shows
what a long backfill runs at. The baseline runs before and after the backfills, and the
ratios use their mean (the machine is shared).
    python -m bench.backfill [--images 1500] [--batch-size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deployments.cluster import free_port
from image_search.embedding import ALLOCATOR_ENV

logger = logging.getLogger("bench.backfill")


def _baseline(folder: Path, batch: int, threads: int) -> dict[str, float]:
    from image_search.config import ModelSettings
    from image_search.embedding import load_embedder, model_card
    from image_search.imaging import decode

    files = sorted(folder.glob("*.jpg"))
    started = time.perf_counter()
    model = load_embedder(ModelSettings(threads=threads))
    spec = model_card("efficientnet-lite0").spec
    loaded = time.perf_counter()
    for i in range(0, len(files), batch):
        pixels = [decode(f.read_bytes(), spec, 40_000_000).pixels for f in files[i : i + batch]]
        model.embed(np.stack(pixels))
    elapsed = time.perf_counter() - started
    return {"img_s": len(files) / elapsed, "load_s": loaded - started, "seconds": elapsed}


def _run_baseline(folder: Path, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.backfill", "--worker", str(folder),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, env={**os.environ, **ALLOCATOR_ENV}, capture_output=True,
                         text=True, check=True)  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _run_backfill(
    folder: Path, work: Path, args: argparse.Namespace, actors: int, cpus: float
) -> dict[str, float]:
    from image_search.stores.lite_server import ensure_lite_server, stop_lite_server

    data = work / f"data-{actors}"
    port = free_port()
    env = {
        **os.environ,
        "ISE__STORES__METADATA_URI": f"sqlite:///{data}/meta.db",
        "ISE__STORES__OBJECTS_URI": f"file://{data}/objects",
        "ISE__STORES__VECTORS_URI": f"{data}/vectors.db",
        "ISE__STORES__LITE_PORT": str(port),
        "ISE__MODEL__THREADS": str(args.threads),
        "RAY_ADDRESS": "",  # always a fresh local Ray, never a cluster this shell points at
    }
    report = work / f"report-{actors}.json"
    data.mkdir(parents=True)
    ensure_lite_server(data / "vectors.db", port)  # a running service would have it up
    try:
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "pipelines.backfill", "--source", str(folder),
               "--report", str(report), "--batch-size", str(args.batch_size),
               "--embed-actors", str(actors), "--embed-cpus", str(cpus),
               "--decode-cpus", str(args.decode_cpus),
               "--write-cpus", "0.1"]  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"backfill failed ({done.returncode}):\n{done.stderr[-4000:]}")
        total = time.perf_counter() - started
    finally:
        stop_lite_server(data / "vectors.db")
    doc = json.loads(report.read_text())
    assert doc["indexed"] == args.images, doc
    steady = doc["after_first_result_images_per_s"]
    return {"img_s": doc["images_per_s"], "seconds": doc["elapsed_s"], "with_ray_start_s": total,
            "first_result_s": doc["first_result_s"], "steady_img_s": steady}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (model.threads)")
    ap.add_argument("--decode-cpus", type=float, default=0.5)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        sys.stdout.write(json.dumps(_baseline(Path(args.worker), args.batch_size, args.threads)))
        sys.stdout.write("\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from bench.photos import distinct_images

    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i, data in enumerate(distinct_images(args.images)):
            (folder / f"{i:05d}.jpg").write_bytes(data)
        before = _run_baseline(folder, args)
        # One embed actor: the baseline's compute. Then one per core, as a node would run it
        # (logical CPUs shared so that the decode tasks and the writer still fit).
        cores = os.cpu_count() or 1
        per_core = max(0.1, (cores - args.decode_cpus - 0.1) / cores)
        runs = [(1, 1.0), (cores, round(per_core, 2))] if cores > 1 else [(1, 1.0)]
        results = [(a, _run_backfill(folder, Path(tmp), args, a, c)) for a, c in runs]
        after = _run_baseline(folder, args)
    base = (before["img_s"] + after["img_s"]) / 2
    logger.info("%d real photos, batch %d, %d torch thread(s) per model, %d cores", args.images,
                args.batch_size, args.threads, os.cpu_count() or 0)  # fmt: skip
    logger.info("model alone (load + read/decode/embed loop): %6.1f img/s  (before %.1f, after "
                "%.1f; model load %.1fs)", base, before["img_s"], after["img_s"],
                before["load_s"])  # fmt: skip
    for actors, r in results:
        logger.info("backfill, %d embed actor(s), three stores written: %6.1f img/s  ratio %.2f "
                    "(goal >= 0.9)", actors, r["img_s"], r["img_s"] / base)  # fmt: skip
        logger.info("    %.1fs in all (%.1fs with Ray start-up); first results after %.1fs; "
                    "%.1f img/s after them, ratio %.2f", r["seconds"], r["with_ray_start_s"],
                    r["first_result_s"], r["steady_img_s"], r["steady_img_s"] / base)  # fmt: skip


if __name__ == "__main__":
    main()
