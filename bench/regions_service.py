"""Region search measured through the service: recall@1 per query kind, global vs regions mode.

Starts `image-search serve` (bench.compare.start_ours) twice on private data folders: once
as a collection is by default (search.regions off), to time a global-only ingest, and once
with search.regions on. The second uploads the evaluation set's index (bench/evalset.py: 372
images) in batches, then asks every query of the held-out half (or --split tuning) through
POST /sample/file, once per mode, one client. Reports recall@1 per kind and group, search
latency p50/p99 per mode, ingest ms per image per mode, and the index size (vectors and
float32 bytes per image).

    scripts/eval-photos.sh DIR
    python -m bench.regions_service DIR [--split heldout] [--query-cells cut|pooled] [--out F]
    python -m bench.regions_service DIR --short   # a smoke run: a few photos, one server
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import processes
from bench.compare import start_ours
from bench.evalset import GROUPS, EvalSet, IndexImage, Query, load
from deployments.cluster import free_port

logger = logging.getLogger("bench.regions_service")
BATCH = 16
MODES = ("global", "regions")
SHORT_PHOTOS = 2  # --short: the query photos asked about ...
SHORT_OTHERS = 10  # ... among this many other indexed images
# Latency is also sampled at the API's default page (limit 100): region search's over-fetch
# grows with the page (image_search.regions.fetch_sizes), on this many queries.
DEFAULT_LIMIT = 100
DEEP_QUERIES = 40
RETRY_503 = 5


@dataclass(frozen=True)
class Plan:
    index: list[IndexImage]
    queries: list[Query]


def plan(evalset: EvalSet, split: str, short: bool) -> Plan:
    queries = [q for q in evalset.queries if q.split == split]
    if not short:
        return Plan(evalset.index, queries)
    targets = sorted({q.target for q in queries})[:SHORT_PHOTOS]
    others = [im for im in evalset.index if im.key not in targets][:SHORT_OTHERS]
    index = [im for im in evalset.index if im.key in targets] + others
    return Plan(index, [q for q in queries if q.target in targets])


@contextmanager
def service(workdir: Path, regions: bool, query_cells: str) -> Iterator[httpx.Client]:
    """A fresh service on the private folder `workdir`, stopped when the block ends."""
    os.environ["ISE__SEARCH__REGIONS"] = "true" if regions else "false"
    os.environ["ISE__SEARCH__QUERY_CELLS"] = query_cells
    server = start_ours(workdir)
    try:
        processes.wait_ready(server, "/readyz", 600)
        with httpx.Client(base_url=server.url, timeout=600) as client:
            yield client
    except BaseException:
        logger.error("server log tail:\n%s", server.log_tail())
        raise
    finally:
        processes.stop(server)


def ingest(client: httpx.Client, images: Sequence[IndexImage]) -> float:
    """Uploads in batches of BATCH, one client; the wall seconds it took."""
    started = time.perf_counter()
    for lo in range(0, len(images), BATCH):
        files = [("file", (f"{im.key}.jpg", im.data)) for im in images[lo : lo + BATCH]]
        r = client.post("/meta/image/files", files=files)
        r.raise_for_status()
        bad = [i for i in r.json()["data"] if not i["succeed"]]
        if bad:
            raise RuntimeError(f"uploads refused: {bad}")
    return time.perf_counter() - started


def region_vectors(workdir: Path) -> tuple[int, int]:
    """(vectors, dim) of the region collection the service wrote, read after it stopped."""
    from image_search.config import load_settings
    from image_search.stores import open_regions
    from image_search.stores.lite_server import ensure_lite_server, stop_lite_server

    db, port = workdir / "vectors.db", free_port()
    ensure_lite_server(db, port)
    try:
        overrides = {"stores.vectors_uri": str(db), "stores.lite_port": port}
        index = open_regions(load_settings(environ={}, overrides=overrides))
        if index is None:
            raise RuntimeError("the service wrote no region collection")
        return index.count(), index.dim
    finally:
        stop_lite_server(db)


RETRIES_503: dict[str, int] = defaultdict(int)  # per mode: answers a client retries


def search(client: httpx.Client, q: Query, mode: str, limit: int) -> tuple[list[Any], float]:
    """One search through the service: its hits and its latency (s). A 503 (Milvus Lite
    answers nothing for seconds while it indexes after a flush) is retried after a pause, as
    a client does, and counted; the latency is the answered attempt's."""
    for attempt in range(RETRY_503):
        t = time.perf_counter()
        r = client.post("/sample/file", files={"file": ("q.jpg", q.data)},
                        data={"mode": mode, "limit": str(limit)})  # fmt: skip
        took = time.perf_counter() - t
        if r.status_code != 503 or attempt == RETRY_503 - 1:
            break
        RETRIES_503[mode] += 1
        logger.warning("503 on a %s search (%s); retrying", mode, r.json().get("message"))
        time.sleep(2.0)
    r.raise_for_status()
    return r.json()["data"], took


def ask(client: httpx.Client, queries: Sequence[Query]
        ) -> tuple[dict[str, dict[str, list[bool]]], dict[str, list[float]]]:  # fmt: skip
    """Every query once per mode: top-1 hits per kind and group, and latencies (s)."""
    hits: dict[str, dict[str, list[bool]]] = {m: defaultdict(list) for m in MODES}
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    for q in queries:
        for mode in MODES:
            data, took = search(client, q, mode, 1)
            lat[mode].append(took)
            top = data[0]["file_name"].removesuffix(".jpg") if data else ""
            for key in {q.kind, q.group}:  # a thumbnail's kind is its group
                hits[mode][key].append(top == q.target)
    return hits, lat


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    p50, p99 = (float(v) for v in np.percentile(np.array(seconds) * 1000, [50, 99]))
    return {"p50_ms": p50, "p99_ms": p99}


def run(root: Path, split: str, query_cells: str, short: bool) -> dict[str, Any]:
    p = plan(load(root), split, short)
    n = len(p.index)
    ingest_ms: dict[str, float | None] = {"global": None}
    if not short:  # the global-only ingest, as a collection is by default
        with (tempfile.TemporaryDirectory(prefix="regions-service-") as tmp,
              service(Path(tmp), False, query_cells) as client):  # fmt: skip
            ingest_ms["global"] = 1000 * ingest(client, p.index) / n
    with tempfile.TemporaryDirectory(prefix="regions-service-") as tmp:
        with service(Path(tmp), True, query_cells) as client:
            ingest_ms["regions"] = 1000 * ingest(client, p.index) / n
            hits, lat = ask(client, p.queries)
            deep = {m: [search(client, q, m, DEFAULT_LIMIT)[1] for q in p.queries[:DEEP_QUERIES]]
                    for m in MODES}  # fmt: skip
            counts = client.get("/meta/image/count").json()
            if counts["vector_count"] != n:
                raise RuntimeError(f"{n} uploaded, counts {counts}")
        # The server stopped (its Lite server with it): read the region collection.
        parts, dim = region_vectors(Path(tmp))
    kinds = sorted({k for m in hits.values() for k in m} - set(GROUPS))
    recall = {
        k: {m: float(np.mean(hits[m][k])) for m in MODES} | {"n": len(hits["global"][k])}
        for k in [*kinds, *(g for g in GROUPS if hits["global"][g])]
    }
    latency = {m: percentiles(lat[m]) for m in MODES}
    latency_default_limit = {m: percentiles(deep[m]) for m in MODES}
    return {"images": n, "queries": len(p.queries), "split": split, "query_cells": query_cells,
            "short": short, "ingest_ms_per_image": ingest_ms, "region_vectors": parts,
            "dim": dim, "recall_at_1": recall, "latency": latency,
            "latency_default_limit": latency_default_limit,
            "retries_503": dict(RETRIES_503)}  # fmt: skip


def report(res: dict[str, Any]) -> None:
    n = res["images"]
    ms = res["ingest_ms_per_image"]
    logger.info("%d images, %d %s queries, query cells %s%s", n, res["queries"], res["split"],
                res["query_cells"], " (--short)" if res["short"] else "")  # fmt: skip
    logger.info("ingest, 1 client, batches of %d: global %s ms per image, regions %.0f ms",
                BATCH, "-" if ms["global"] is None else f"{ms['global']:.0f}",
                ms["regions"])  # fmt: skip
    per_image, dim = 1 + res["region_vectors"] / n, res["dim"]
    logger.info("index: %.1f vectors per image (1 global + %.1f thumbnail view and regions), "
                "%.1f KiB of float32 per image (dim %d; global only %.1f KiB)", per_image,
                per_image - 1, per_image * dim * 4 / 1024, dim, dim * 4 / 1024)  # fmt: skip
    logger.info("%-18s %8s %8s %5s", "recall@1", *MODES, "n")
    for kind, row in res["recall_at_1"].items():
        logger.info("%-18s %8.3f %8.3f %5d", kind, *(row[m] for m in MODES), row["n"])
    logger.info("searches answered 503 and retried: %s", res["retries_503"] or "none")
    for m, lat in res["latency"].items():
        deep = res["latency_default_limit"][m]
        logger.info("latency %-8s p50 %6.0f ms  p99 %6.0f ms (1 client, limit 1); limit %d: "
                    "p50 %6.0f ms  p99 %6.0f ms", m, lat["p50_ms"], lat["p99_ms"],
                    DEFAULT_LIMIT, deep["p50_ms"], deep["p99_ms"])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("root", type=Path, help="the folder scripts/eval-photos.sh filled")
    ap.add_argument("--split", default="heldout", choices=("heldout", "tuning"))
    ap.add_argument("--query-cells", default="cut", choices=("cut", "pooled"))
    ap.add_argument(
        "--short",
        action="store_true",
        help=f"{SHORT_PHOTOS} query photos among {SHORT_OTHERS} others, one server",
    )
    ap.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = run(args.root, args.split, args.query_cells, args.short)
    report(res)
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
