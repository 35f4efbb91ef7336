"""What a Milvus server's index costs a search: CPU per query and recall@10, index against index.

    flock /tmp/ise-ray.lock .venv/bin/python -m bench.index_cost --out /tmp/index-cost.json
        # 1,000,000 vectors, HNSW (the configured one: the baseline) then SCANN; ~35 minutes
    .venv/bin/python -m bench.index_cost --vectors 20000 \
        --index 'IVF_SQ8|{"nlist": 128}|[{"nprobe": 8}]'

The question it answers: at a million vectors, is there an index that costs Milvus less CPU
per search than the configured HNSW at the same recall? A search by a stored image costs 7-13
ms of CPU across the processes at 16 clients, Milvus 2.8-4 of them (README, "A million
vectors"); only what Milvus spends can an index change.

The vectors are bench.search_scale's (real views mixed and perturbed, the same seed), inserted
once through the store layer; then each index in turn is built on them (the collection
released, the last index dropped, the new one built and loaded, Milvus left to be quiet) and
each of its search parameters measured, twice, in alternating order: recall@10 of
VectorIndex.search against exact brute force for fresh vectors, and the Milvus process's CPU
per query while two threads send batches of --nq queries (the Indexer's batch at 16 clients
holds a few: it sends every search that arrived while one ran). The baseline is the
configured index and search parameters (config.yaml), measured in the same run; each row
prints its CPU as a ratio of the baseline's. No HTTP, no metadata store: the rest of a search's
cost does not depend on the index.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import processes
from bench.compare import SIGNALS, machine
from bench.search_scale import (
    DEFAULT_CACHE,
    DEFAULT_EVALSET,
    ROOT,
    SEARCH_LIMIT,
    Basis,
    IndexChoice,
    K,
    Stores,
    admin_client,
    chunk,
    embed_views,
    exact_truth,
    fill_vectors,
    recall_at_k,
    server_stores,
    vector_index,
    wait_indexed,
    wait_quiet,
)

logger = logging.getLogger("bench.index_cost")

# SCANN (Milvus 2.3's IVF with 4-bit fast-scan codes, re-ranked on the raw vectors): nlist
# about sqrt(N) (k-means on 1M x 1280 at 1024 lists took 6 minutes of both cores), and the
# nprobe range over which its recall crosses HNSW's.
DEFAULT_CANDIDATES = (
    'SCANN|{"nlist": 1024}|[{"nprobe": 8, "reorder_k": 50}, '
    '{"nprobe": 16, "reorder_k": 50}, {"nprobe": 32, "reorder_k": 50}]'
)


@dataclass(frozen=True)
class Candidate:
    """One index and the search parameters to measure it at."""

    index_type: str
    index_params: dict[str, Any]
    searches: list[dict[str, Any]]

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """TYPE|index params JSON|[search params JSON, ...]"""
        kind, index_json, searches_json = text.split("|")
        searches = json.loads(searches_json)
        if not isinstance(searches, list) or not searches:
            raise argparse.ArgumentTypeError(f"no search parameters in {text!r}")
        return cls(kind, json.loads(index_json), searches)

    def choices(self) -> list[IndexChoice]:
        return [IndexChoice(self.index_type, self.index_params, s) for s in self.searches]


def baseline() -> Candidate:
    """The configured index and search parameters (config.yaml), plus ef 64 for HNSW."""
    from image_search.config import load_settings

    st = load_settings(ROOT / "config.yaml").stores
    searches = [dict(st.search_params)]
    if st.index_type == "HNSW" and st.search_params.get("ef") != 64:
        searches.append({**st.search_params, "ef": 64})
    return Candidate(st.index_type, dict(st.index_params), searches)


def rebuild(stores: Stores, choice: IndexChoice, n: int) -> float:
    """Replace the collection's index with choice's, loaded and quiet; seconds to build."""
    client = admin_client(stores.endpoint, lite=False)
    index = vector_index(stores.endpoint, choice)
    collection = index.collection
    began = time.monotonic()
    try:
        client.release_collection(collection, timeout=600)
        for name in client.list_indexes(collection, timeout=60):
            client.drop_index(collection, name, timeout=600)
        client.create_index(collection, index.index_spec(client), timeout=7200)
    finally:
        client.close()
    wait_indexed(stores.endpoint, collection, n, lite=False)
    took = time.monotonic() - began
    wait_quiet(stores.vector_pid)
    return took


def measure(stores: Stores, choice: IndexChoice, fresh: np.ndarray, truth: list[list[int]],
            load: np.ndarray, nq: int, threads: int) -> dict[str, Any]:  # fmt: skip
    """recall@10 for the fresh vectors, then Milvus's CPU per query under batches of nq."""
    index = vector_index(stores.endpoint, choice, timeout_s=60)
    # What the service asks for a page of 10: limit + 16 (image_search.indexing).
    found = [[h.id for h in index.search(v, SEARCH_LIMIT + 16)[:K]] for v in fresh]
    per_thread = len(load) // threads

    def send(k: int) -> None:
        mine = load[k * per_thread : (k + 1) * per_thread]
        for s in range(0, len(mine) - nq + 1, nq):
            index.search_many(mine[s : s + nq], SEARCH_LIMIT + 16)

    pid = stores.vector_pid()
    first = processes.proc_info(pid) if pid else None
    began = time.monotonic()
    workers = [threading.Thread(target=send, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.monotonic() - began
    last = processes.proc_info(pid) if pid else None
    if first is None or last is None:
        raise RuntimeError("the Milvus server is gone")
    queries = threads * (per_thread // nq) * nq
    row = {"index": choice.index_type, "index_params": choice.index_params,
           "search_params": choice.search_params, "recall": recall_at_k(found, truth),
           "milvus_cpu_ms": 1000 * (last.cpu_s - first.cpu_s) / queries,
           "queries_per_s": queries / wall}  # fmt: skip
    logger.info(
        "  %s: recall@10 %.4f, Milvus %.2f ms of CPU a query, %.0f queries/s",
        choice.label(),
        row["recall"],
        row["milvus_cpu_ms"],
        row["queries_per_s"],
    )
    return row


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    basis = Basis.of(embed_views(args.views, args.evalset, args.cache))
    candidates = [baseline(), *args.index]
    stores = server_stores(workdir, args.segment_mb)
    out: dict[str, Any] = {"vectors": args.vectors, "nq": args.nq, "threads": args.threads,
                           "builds_s": {}, "rows": []}  # fmt: skip
    try:
        first = candidates[0].choices()[0]
        out["fill"] = fill_vectors(stores, first, basis, args.vectors)
        out["builds_s"][first.label()] = out["fill"]["index_wait_s"]
        fresh = chunk(basis, 0, args.queries, stream=1)  # not in the index
        truth, _ = exact_truth(basis, args.vectors, fresh)
        load = chunk(basis, 1, args.load_queries, stream=1)
        for k, cand in enumerate(candidates):
            choices = cand.choices()
            if k:
                out["builds_s"][choices[0].label()] = rebuild(stores, choices[0], args.vectors)
            # Twice, the second time in reverse: a drift over the minutes falls on both ends.
            for c in [*choices, *reversed(choices)]:
                out["rows"].append(measure(stores, c, fresh, truth, load, args.nq,
                                           args.threads))  # fmt: skip
    finally:
        with SIGNALS.uninterrupted():
            stores.stop()
    return out


def report(out: dict[str, Any]) -> list[str]:
    """One line per index and search parameters: both measurements, and the mean's ratio to
    the baseline's (the first row)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in out["rows"]:
        key = IndexChoice(row["index"], row["index_params"], row["search_params"]).label()
        by.setdefault(key, []).append(row)
    means = {k: sum(r["milvus_cpu_ms"] for r in rows) / len(rows) for k, rows in by.items()}
    base = next(iter(means.values()))
    lines = [f"{out['vectors']:,} vectors, batches of {out['nq']} queries from {out['threads']} "
             "threads; Milvus CPU per query (each measurement), its mean's ratio to the "
             "baseline's, recall@10 against exact:",
             "| index, search parameters | Milvus ms of CPU a query | ratio | queries/s | "
             "recall@10 |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for key, rows in by.items():
        cpu = " / ".join(f"{r['milvus_cpu_ms']:.2f}" for r in rows)
        qps = " / ".join(f"{r['queries_per_s']:.0f}" for r in rows)
        lines.append(f"| {key} | {cpu} | {means[key] / base:.2f} | {qps} | "
                     f"{rows[0]['recall']:.4f} |")  # fmt: skip
    builds = ", ".join(f"{k.split(' ')[0]} {v / 60:.1f} min" for k, v in out["builds_s"].items())
    lines.append(f"index builds (to loaded): {builds}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument(
        "--index",
        type=Candidate.parse,
        action="append",
        help="TYPE|index params JSON|[search params JSON, ...] to measure against "
        f"the configured index (repeatable; default {DEFAULT_CANDIDATES})",
    )
    ap.add_argument("--views", type=int, default=1_500, help="real views embedded")
    ap.add_argument("--evalset", type=Path, default=DEFAULT_EVALSET)
    ap.add_argument("--queries", type=int, default=300, help="recall queries")
    ap.add_argument("--load-queries", type=int, default=2_400, help="queries per CPU measurement")
    ap.add_argument("--nq", type=int, default=8, help="queries per search request")
    ap.add_argument("--threads", type=int, default=2, help="threads sending them")
    ap.add_argument(
        "--segment-mb",
        type=int,
        default=6144,
        help="seal segments near this size (bench.search_scale says why)",
    )
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, help="write the results here as JSON")
    args = ap.parse_args(argv)
    if not args.index:
        args.index = [Candidate.parse(DEFAULT_CANDIDATES)]
    args.queries = min(args.queries, args.vectors)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    SIGNALS.install()
    host = machine()
    workdir = Path(tempfile.mkdtemp(prefix="ise-index-cost-", dir="/tmp"))
    try:
        out = run(args, workdir)
    except KeyboardInterrupt:
        logger.error("interrupted; everything started is stopped")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out["machine"] = host
    for line in report(out):
        logger.info("%s", line)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
