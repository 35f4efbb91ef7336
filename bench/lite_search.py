"""Milvus Lite's search executor against ours (image_search/stores/lite_search.py), alternating,
in one run, at several collection sizes.

Milvus Lite 3.2.2 walks every stored row in Python on every search to decide which rows may be
returned; ours works that out once per set of segments. Each size gets a collection of its own
in this process (no server, no Ray): `--sizes` rows of the default model's dimension inserted in
batches and flushed, the configured HNSW index built, then the state a live service leaves: a
tail of unflushed rows (TAIL_ROWS) and a few deleted keys. Then `--rounds` rounds, each timing
`--queries` searches (FETCH nearest, the configured ef) with one executor and then the other,
the order alternating per round. It prints per size the p50/p99 ms of a search with each and
their ratio, and checks that both returned the same hits.

    .venv/bin/python -m bench.lite_search                       # 10,000 and 100,000 rows
    .venv/bin/python -m bench.lite_search --sizes 2000 --rounds 2 --queries 5   # a smoke run

What it does not show: the gRPC server and the rest of the service around a search
(bench.search_scale --store lite measures those end to end), or content: the vectors are random,
which costs the walk what real ones cost but makes HNSW's own share larger than real photos'
clusters do. Other work on the machine moves every figure: compare within a run only.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.lite_tail import FETCH
from bench.search_scale import percentile
from image_search.stores.vectors import SEARCHED_FLUSH_ROWS

logger = logging.getLogger("bench.lite_search")
ROOT = Path(__file__).resolve().parents[1]
TAIL_ROWS = SEARCHED_FLUSH_ROWS  # the most unflushed rows a searched service leaves
DELETED = 16
INSERT_BATCH = 5000
EXECUTORS = ("Milvus Lite", "ours")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="stored rows per collection")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--queries", type=int, default=20, help="searches per executor per round")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args(argv)


def build(folder: Path, rows: int, dim: int, settings: Any) -> tuple[Any, Any]:
    """A loaded Milvus Lite collection of `rows` random unit vectors, a tail and deletes."""
    from milvus_lite.db import MilvusLite
    from milvus_lite.schema.types import CollectionSchema, DataType, FieldSchema

    db = MilvusLite(str(folder))
    schema = CollectionSchema(
        fields=[
            FieldSchema("id", DataType.INT64, is_primary=True),
            FieldSchema("vector", DataType.FLOAT_VECTOR, dim=dim),
        ]
    )
    c = db.create_collection("bench", schema)
    c.create_index("vector", {"index_type": "HNSW", "metric_type": "L2",
                              "params": settings.stores.index_params})  # fmt: skip
    rng = np.random.default_rng(rows)

    def insert(first: int, n: int) -> None:
        x = rng.standard_normal((n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        c.insert([{"id": first + i, "vector": v.tolist()} for i, v in enumerate(x)])

    began = time.monotonic()
    for first in range(0, rows, INSERT_BATCH):
        insert(first, min(INSERT_BATCH, rows - first))
    c.flush()
    c._wait_for_bg()  # the flush's compaction and index builds, in Lite's own thread: settled
    c.release()
    c.load()  # builds each segment's HNSW graph
    insert(rows, TAIL_ROWS)
    c.delete([int(k) for k in rng.choice(rows, DELETED, replace=False)])
    logger.info("%d rows: built in %.0f s, %d segments", rows, time.monotonic() - began,
                len(c._read_snapshot()[0]))  # fmt: skip
    return db, c


def timed(c: Any, queries: np.ndarray, ef: int) -> tuple[list[float], list[Any]]:
    took, answers = [], []
    for q in queries:
        began = time.perf_counter()
        answers.append(c.search([q.tolist()], top_k=FETCH, search_params={"ef": ef}))
        took.append((time.perf_counter() - began) * 1000)
    return took, answers


def measure(rows: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import milvus_lite.engine.collection as engine

    from image_search.config import load_settings
    from image_search.embedding import model_card
    from image_search.stores import lite_search

    settings = load_settings(ROOT / "config.yaml")
    dim = model_card(settings.model.name).dim
    ef = int(settings.stores.search_params.get("ef", 128))
    upstream = engine.execute_search_with_index

    def ours(**kwargs: Any) -> Any:
        return lite_search.fast_search(upstream, **kwargs)

    executors: dict[str, Callable[..., Any]] = {EXECUTORS[0]: upstream, EXECUTORS[1]: ours}
    db, c = build(workdir / f"rows-{rows}", rows, dim, settings)
    times: dict[str, list[float]] = {name: [] for name in EXECUTORS}
    same = True
    rng = np.random.default_rng(0)
    try:
        for r in range(args.rounds):
            queries = rng.standard_normal((args.queries, dim)).astype(np.float32)
            answers: dict[str, list[Any]] = {}
            for name in EXECUTORS if r % 2 == 0 else tuple(reversed(EXECUTORS)):
                engine.execute_search_with_index = executors[name]
                took, answers[name] = timed(c, queries, ef)
                times[name] += took
            same = same and answers[EXECUTORS[0]] == answers[EXECUTORS[1]]
    finally:
        engine.execute_search_with_index = upstream
        db.close()
    out: dict[str, Any] = {"rows": rows, "ef": ef, "fetch": FETCH, "same_hits": same}
    for name in EXECUTORS:
        p50, p99 = percentile(times[name], 50), percentile(times[name], 99)
        assert p50 is not None and p99 is not None  # every round timed some searches
        out[name] = {"p50_ms": p50, "p99_ms": p99}
    out["ratio_p50"] = out[EXECUTORS[1]]["p50_ms"] / out[EXECUTORS[0]]["p50_ms"]
    out["ratio_p99"] = out[EXECUTORS[1]]["p99_ms"] / out[EXECUTORS[0]]["p99_ms"]
    return out


def report(results: list[dict[str, Any]]) -> None:
    logger.info("Milvus Lite's search executor against ours, ms per search (FETCH=%d)", FETCH)
    logger.info("%10s | %22s | %22s | %13s | same hits", "rows", "Milvus Lite p50/p99",
                "ours p50/p99", "ratio p50/p99")  # fmt: skip
    for r in results:
        a, b = r[EXECUTORS[0]], r[EXECUTORS[1]]
        logger.info("%10d | %10.2f / %9.2f | %10.2f / %9.2f | %5.2f / %5.2f | %s", r["rows"],
                    a["p50_ms"], a["p99_ms"], b["p50_ms"], b["p99_ms"], r["ratio_p50"],
                    r["ratio_p99"], "yes" if r["same_hits"] else "NO")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # which of its builds it loaded
    workdir = Path(tempfile.mkdtemp(prefix="ise-lite-search-", dir="/tmp"))
    try:
        results = [measure(int(n), args, workdir) for n in args.sizes.split(",")]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r["same_hits"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
