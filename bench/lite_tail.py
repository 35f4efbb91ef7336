"""Milvus Lite's unflushed tail under uploads and searches at once: the searched-tail flush rule
against the rule before it, alternating, in one run.

Milvus Lite brute-forces every unflushed row for every query. The Indexer flushes the tail when
FLUSH_ROWS are pending or after FLUSH_AFTER_S without writes, and, where searches are paying for
it, once SEARCHED_FLUSH_ROWS are pending (image_search/stores/vectors.py). The baseline is the
same index with that last rule off. Each trial starts its own Milvus Lite server on a free
loopback port, writes `--base` flushed rows, then for `--seconds` one thread upserts a row and
another searches (26 nearest, as a 10-hit page asks) at `--rate` per second each, while a third
runs the owner's check every FLUSH_CHECK_S, as the Indexer's flush loop does. It prints, per
rule, Milvus Lite's CPU (cores, and ms per search + upload pair) and the searches' p50/p99, then
the ratios.

    .venv/bin/python -m bench.lite_tail                   # 3 trials of 20 s per rule
    .venv/bin/python -m bench.lite_tail --seconds 2 --trials 1 --base 200   # a smoke run

What it does not show: the rest of the service (HTTP, the model; bench.compare has them), a
Milvus server (left to seal its own segments), or content: the vectors are random, which costs
a brute-force scan what real ones cost. Other work on the machine moves every figure: compare
the two rules within a run only.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from bench import cpu
from bench.compare import SIGNALS
from bench.search_scale import percentile
from deployments.cluster import free_port
from image_search.stores import vectors
from image_search.stores.base import FLUSH_CHECK_S
from image_search.stores.lite_server import ensure_lite_server, stop_lite_server

logger = logging.getLogger("bench.lite_tail")
DIM = 1280  # the default model's
FETCH = 26  # what a 10-hit page asks Milvus for (limit + 16, image_search.indexing)
RULES = ("before", "searched tail")


@contextmanager
def searched_rule(rows: int) -> Iterator[None]:
    """The searched-tail rule at `rows` (sys.maxsize: off, the rule before it)."""
    shipped = vectors.SEARCHED_FLUSH_ROWS
    vectors.SEARCHED_FLUSH_ROWS = rows
    try:
        yield
    finally:
        vectors.SEARCHED_FLUSH_ROWS = shipped


def trial(rule: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    data = workdir / f"vectors-{rule.replace(' ', '-')}.db"
    uri = ensure_lite_server(data, free_port())
    try:
        index = vectors.MilvusVectorIndex(uri, "tail", DIM, "bench", keepalive=False,
                                          search_consistency_level="Session")  # fmt: skip
        rng = np.random.default_rng(0)
        rows = rng.standard_normal((args.base + int(args.rate * args.seconds) + 1, DIM))
        rows = rows.astype(np.float32)
        index.upsert(list(range(args.base)), rows[: args.base])
        index.flush()
        with searched_rule(sys.maxsize if rule == RULES[0] else args.searched_rows):
            return _drive(index, rows, args, str(data))
    finally:
        with SIGNALS.uninterrupted():
            stop_lite_server(data)


def _drive(
    index: vectors.MilvusVectorIndex, rows: np.ndarray, args: argparse.Namespace, marker: str
) -> dict[str, Any]:
    period = 1.0 / args.rate
    end = time.monotonic() + args.seconds
    latencies: list[float] = []

    def writer() -> None:
        for i in range(args.base, len(rows)):  # bounded in rows as well as in time
            if time.monotonic() >= end:
                return
            index.upsert([i], rows[i : i + 1])
            time.sleep(period)

    def searcher() -> None:
        j = 0
        while time.monotonic() < end:
            began = time.perf_counter()
            index.search_many(rows[j % args.base][None, :], FETCH)
            latencies.append(time.perf_counter() - began)
            j += 1
            time.sleep(period)

    def owner() -> None:
        while time.monotonic() < end:
            time.sleep(FLUSH_CHECK_S)
            index.flush_if_due()

    errors: list[BaseException] = []

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except Exception as exc:  # reported after the join: a trial with one is no figure
                errors.append(exc)

        return run

    # Session -1 is nobody's: the server is found by its data folder on its command line.
    before = cpu.sample(-1, marker)
    began = time.monotonic()
    threads = [threading.Thread(target=guarded(f), daemon=True) for f in (writer, searcher, owner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"the trial failed: {errors[0]!r}") from errors[0]
    wall_s = time.monotonic() - began
    use = cpu.spent(before, cpu.sample(-1, marker), wall_s, len(latencies))
    lite_ms = use["by_role_ms"].get("Milvus Lite", 0.0)
    ms = [1000 * s for s in latencies]
    return {
        "searches": len(latencies),
        "lite_cores": lite_ms * len(latencies) / 1000 / wall_s,
        "lite_ms_per_search": lite_ms,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="per trial")
    ap.add_argument("--trials", type=int, default=3, help="per rule, alternating")
    ap.add_argument("--rate", type=float, default=50.0, help="uploads/s and searches/s, each")
    ap.add_argument("--base", type=int, default=1000, help="flushed rows before the load")
    ap.add_argument(
        "--searched-rows",
        type=int,
        default=vectors.SEARCHED_FLUSH_ROWS,
        help="the rule's threshold to try (default: the shipped one)",
    )
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    args = ap.parse_args(argv)
    if min(args.seconds, args.trials, args.rate, args.base, args.searched_rows) <= 0:
        ap.error("--seconds, --trials, --rate, --base and --searched-rows must be positive")
    return args


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    def med(rule: str, key: str) -> float:
        return float(median(r[key] for r in results[rule] if r[key] is not None))

    logger.info("Milvus Lite, %d flushed rows, then %.0f uploads/s and %.0f searches/s for %.0f "
                "s; searched tail at %d rows; median of %d trials per rule (alternating)",
                args.base, args.rate, args.rate, args.seconds, args.searched_rows,
                args.trials)  # fmt: skip
    # Its CPU per search counts the uploads' too: one of each per period.
    logger.info("%-14s | %-11s | %-15s | %-12s | %s", "rule", "Lite cores", "Lite ms/search",
                "search p50", "search p99")  # fmt: skip
    summary: dict[str, Any] = {}
    for rule in RULES:
        summary[rule] = {k: med(rule, k) for k in
                         ("lite_cores", "lite_ms_per_search", "p50_ms", "p99_ms")}  # fmt: skip
        s = summary[rule]
        logger.info("%-14s | %11.3f | %15.1f | %9.1f ms | %7.1f ms", rule, s["lite_cores"],
                    s["lite_ms_per_search"], s["p50_ms"], s["p99_ms"])  # fmt: skip
    new, old = (summary[r] for r in reversed(RULES))
    ratios = {k: new[k] / old[k] if old[k] else None for k in new}  # below 1: the rule gains
    logger.info("ratio (searched tail / before): %s",
                ", ".join(f"{k} {v:.2f}" for k, v in ratios.items() if v is not None))  # fmt: skip
    return {"args": {k: v for k, v in vars(args).items() if k != "json"}, "trials": results,
            "median": summary, "ratio": ratios}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    SIGNALS.install()
    workdir = Path(tempfile.mkdtemp(prefix="ise-tail-", dir="/tmp"))
    results: dict[str, list[dict[str, Any]]] = {rule: [] for rule in RULES}
    try:
        for n in range(args.trials):
            for rule in RULES if n % 2 == 0 else tuple(reversed(RULES)):
                results[rule].append(trial(rule, args, workdir))
                logger.info("trial %d, %s: %s", n + 1, rule, results[rule][-1])
    except KeyboardInterrupt:
        logger.error("interrupted; the server is stopped")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = report(results, args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
