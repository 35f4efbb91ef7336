"""HTTP ingest and search through the real Serve graph, side by side in one run.

Baseline: one image per request, one client at a time (how the original's synchronous route was
used). Ours: the same kind of images uploaded by concurrent clients (@serve.batch fills
batches) and through the batch route. Then search latency right after the uploads.
    python -m bench.ingest [--images 48]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.photos import distinct_images

logger = logging.getLogger("bench.ingest")
ROOT = Path(__file__).resolve().parents[1]


async def one_by_one(client: httpx.AsyncClient, images: list[bytes]) -> None:
    for i, data in enumerate(images):
        r = await client.post("/meta/image/file", files={"file": (f"a{i}.jpg", data)})
        r.raise_for_status()


async def concurrent(client: httpx.AsyncClient, images: list[bytes], clients: int) -> None:
    sem = asyncio.Semaphore(clients)

    async def one(i: int, data: bytes) -> None:
        async with sem:
            r = await client.post("/meta/image/file", files={"file": (f"b{i}.jpg", data)})
            r.raise_for_status()

    await asyncio.gather(*(one(i, d) for i, d in enumerate(images)))


async def batched(client: httpx.AsyncClient, images: list[bytes], size: int) -> None:
    for start in range(0, len(images), size):
        parts = [
            ("file", (f"c{start + i}.jpg", d)) for i, d in enumerate(images[start : start + size])
        ]
        r = await client.post("/meta/image/files", files=parts)
        r.raise_for_status()


async def run(url: str, n: int) -> None:
    sets = [distinct_images(4 * n)[k * n : (k + 1) * n] for k in range(4)]
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await batched(client, sets[3][:4], 4)  # warm every replica once
        rates = {}
        for label, coro in (
            ("one per request, 1 client (baseline)", one_by_one(client, sets[0])),
            ("one per request, 8 concurrent clients", concurrent(client, sets[1], 8)),
            ("batch route, 16 per request", batched(client, sets[2], 16)),
        ):
            t0 = time.perf_counter()
            await coro
            rates[label] = n / (time.perf_counter() - t0)
        lat = []
        for data in sets[0][:30]:
            t0 = time.perf_counter()
            r = await client.post("/sample/file", files={"file": ("q.jpg", data)},
                                  data={"limit": "10"})  # fmt: skip
            lat.append(time.perf_counter() - t0)
            r.raise_for_status()
    base = next(iter(rates.values()))
    logger.info("ingest of %d real photos per mode (%d total)", n, 3 * n)
    for label, rate in rates.items():
        logger.info("%-42s %6.1f img/s   ratio %.2f", label, rate, rate / base)
    p50, p95 = np.percentile(lat, [50, 95]) * 1000
    logger.info("search right after ingest (top 10 of %d): p50 %.0f ms, p95 %.0f ms", 3 * n + 4,
                p50, p95)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from deployments.cluster import init_local_ray

    init_local_ray(namespace="serve")
    from ray import serve

    from deployments.app import build_app, serve_config_options
    from image_search.stores.lite_server import stop_lite_server

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "stores.metadata_uri": f"sqlite:///{tmp}/meta.db",
            "stores.objects_uri": f"file://{tmp}/objects",
            "stores.vectors_uri": f"{tmp}/vectors.db",
            "stores.lite_port": 19631,
        }
        port = int(os.environ.get("BENCH_PORT", "8765"))
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(
            {
                "config": str(ROOT / "config.yaml"),
                "overrides": overrides,
                "deployment_options": serve_config_options(ROOT / "serve_config.yaml"),
            }
        )
        serve.run(app, name="bench", route_prefix="/")
        try:
            asyncio.run(run(f"http://127.0.0.1:{port}", args.images))
        finally:
            serve.shutdown()
            stop_lite_server(overrides["stores.vectors_uri"])


if __name__ == "__main__":
    main()
