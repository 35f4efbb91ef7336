"""Metadata queries at a million rows: does every query the service runs stay flat?

Fills a MariaDB server (started here, on a free loopback port) and SQLite (the embedded default)
with N image rows and their content rows in bulk, as bench.search_scale does, and a baseline
database of 10,000 rows; then times each query the service runs on them, at both sizes, and
prints the ratio (flat = about 1x). The baselines of the same run:
- `count rows (COUNT(*))`, what count() read before the kept counter;
- `page offset n/2` and `page offset n-20`, the OFFSET pages a cursor page (`page before`)
  replaces at the same depth.

    .venv/bin/python -m bench.metadata_scale                 # 1,000,000 rows, both stores
    .venv/bin/python -m bench.metadata_scale --rows 200000 --store lite

What it does not show: queries under concurrent writes (tests/contract covers correctness
there), the vector side (bench.search_scale), or a cold cache: each figure is a median of warm
repeats on a machine that other work shares.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.search_scale import SIGNALS, fill_metadata, metadata_latencies

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench.metadata_scale")


@contextmanager
def databases(kind: str, workdir: Path) -> Iterator[tuple[str, str]]:
    """(large, small) metadata URIs of one kind; a MariaDB server runs inside the block."""
    if kind == "lite":
        yield f"sqlite:///{workdir}/meta.db", f"sqlite:///{workdir}/meta-small.db"
        return
    sys.path.insert(0, str(ROOT))  # tests/ is a package of the project, not an installed one
    from tests.servers.mariadb_server import MariaDB

    maria = MariaDB(workdir / "mariadb")
    try:
        maria.start()
        yield maria.create_database("ise_scale"), maria.create_database("ise_small")
    finally:
        with SIGNALS.uninterrupted():
            maria.stop(timeout=30)


def run_store(kind: str, rows: int, small_rows: int, workdir: Path) -> dict[str, Any]:
    with databases(kind, workdir) as (large, small):
        fill_s = fill_metadata(large, rows)
        logger.info("%s: %d rows in %.0fs", kind, rows, fill_s)
        fill_metadata(small, small_rows)
        return {
            "store": "MariaDB" if kind == "server" else "SQLite",
            "rows": rows,
            "fill_s": round(fill_s, 1),
            "small": metadata_latencies(small, small_rows),
            "large": metadata_latencies(large, rows),
        }


def report(results: list[dict[str, Any]], small_rows: int) -> list[str]:
    lines = []
    for r in results:
        small, large = r["small"], r["large"]
        lines.append(f"{r['store']}: median ms at {small_rows:,} rows vs {r['rows']:,} rows "
                     f"(ratio; flat = ~1x); filled in {r['fill_s']:.0f}s")  # fmt: skip
        for q in small:
            ratio = large[q] / small[q] if small[q] else float("nan")
            lines.append(f"    {q:<24} {small[q]:9.2f} {large[q]:9.2f}  ({ratio:.1f}x)")
        for kept, baseline in (("count", "count rows (COUNT(*))"),
                               ("page before n/2", "page offset n/2"),
                               ("page before n-20", "page offset n-20")):  # fmt: skip
            speedup = large[baseline] / large[kept]
            lines.append(f"    at {r['rows']:,} rows: {kept} is {speedup:.0f}x faster than "
                         f"{baseline}")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small-rows", type=int, default=10_000)
    ap.add_argument("--store", choices=("server", "lite", "both"), default="both")
    ap.add_argument("--out", type=Path, help="write the results here as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    SIGNALS.install()
    began = time.monotonic()
    results = []
    try:
        for kind in ("server", "lite") if args.store == "both" else (args.store,):
            workdir = Path(tempfile.mkdtemp(prefix=f"ise-metadata-{kind}-"))
            try:
                results.append(run_store(kind, args.rows, args.small_rows, workdir))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    except KeyboardInterrupt:
        logger.error("interrupted; everything started is stopped")
        return 130
    for line in report(results, args.small_rows):
        logger.info("%s", line)
    load = [round(x, 1) for x in os.getloadavg()]
    minutes = (time.monotonic() - began) / 60
    logger.info("%d CPUs, load average %s, %.0f min in all", os.cpu_count() or 0, load, minutes)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
