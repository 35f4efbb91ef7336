"""Embedded stores shared by several Ray processes: two Indexer replicas on one data dir."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import AppFactory

pytestmark = pytest.mark.integration


def variants(photos: dict[str, bytes], n: int) -> list[bytes]:
    """n distinct images (different crops of real photos)."""
    out = []
    names = sorted(photos)
    for i in range(n):
        im = Image.open(io.BytesIO(photos[names[i % len(names)]])).convert("RGB")
        k = i // len(names) + 1
        im = im.crop((k * 7, k * 5, im.width - k * 3, im.height - k * 4))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def test_two_indexer_processes_share_the_embedded_stores(
    make_app: AppFactory, photos: dict[str, bytes]
) -> None:
    # Two Indexer replicas are two processes: both open SQLite (WAL) and the one Milvus Lite
    # server for the data directory; neither may lock the other out.
    url = make_app("multi", extra_options={"Indexer": {"num_replicas": 2}})
    images = variants(photos, 24)

    def one(i: int) -> httpx.Response:
        return httpx.post(
            url + "/meta/image/file",
            files={"file": (f"{i}.jpg", images[i])},
            data={"meta_uuid": f"mp-{i}"},
            timeout=180,
        )

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(one, range(len(images))))
    assert [r.status_code for r in responses] == [200] * len(images), [r.text for r in responses]
    client = httpx.Client(base_url=url, timeout=120)
    counts = client.get("/meta/image/count").json()
    assert counts["image_count"] == counts["vector_count"] == len(images)

    # Read-after-write, and fast: right after the uploads, before any idle flush.
    latencies = []
    for i in (0, 7, 23):
        t0 = time.perf_counter()
        r = client.post("/sample/file", files={"file": ("q.jpg", images[i])}, data={"limit": "1"})
        latencies.append(time.perf_counter() - t0)
        assert r.json()["data"][0]["meta_uuid"] == f"mp-{i}"
    make_app.delete("multi")
    assert float(np.median(latencies)) < 5.0  # generous: 2 shared cores; typical ~0.1 s
