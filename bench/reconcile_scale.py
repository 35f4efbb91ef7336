"""Reconcile's scan at a million rows: does what it holds stay flat as the library grows?

Fills SQLite (the embedded default's metadata) with N image rows and their content rows in bulk,
as bench.search_scale does, a local object folder with each row's object (empty files) and a
vector id list; plants a few disagreements (rows without a vector or an object, orphan vectors
and objects); then runs `pipelines.findings.scan` on the same stores two ways:
- the baseline, one part (`part_contents` above N): every content and vector id of the
  library in memory at once, as the scan read them before (it then held every object key
  too, which this baseline does not: the old scan held more);
- the default, parts of at most about PART_CONTENTS contents.
It prints the peak of Python allocations during each scan (tracemalloc), its time, and the
ratios, and checks that both find the same disagreements.

    .venv/bin/python -m bench.reconcile_scale                 # 100,000 and 1,000,000 rows
    .venv/bin/python -m bench.reconcile_scale --rows 20000 200000

What it does not show: the vector side is a stand-in that lists ids from a numpy array
(allocated before the measurement; Milvus's query iterator pages ids the same way, 4,096 at a
time), and S3 listings (streamed in pages of 1,000, like the local folder's). Times include
nothing of tracemalloc's: each scan is timed in a run of its own, then measured in another.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.search_scale import SIGNALS, fill_metadata, row_sha
from image_search.records import milvus_id_for, object_key_for
from image_search.stores import Stores
from image_search.stores.metadata import SqlMetadataStore
from image_search.stores.objects import LocalObjectStore
from pipelines.findings import PART_CONTENTS, Findings, scan

logger = logging.getLogger("bench.reconcile_scale")
# Every this-many rows loses its vector, and every (this + 1) its object: disagreements to find.
PLANT_EVERY = 10_007


class IdList:
    """The vector side as a sorted id array: what scan reads of a collection is its ids."""

    name = "vectors"

    def __init__(self, ids: np.ndarray) -> None:
        self.sorted = np.sort(ids.astype(np.int64))

    def ids(self, within: tuple[int, int] | None = None) -> Iterator[int]:
        lo, hi = within or (0, 2**63)
        a = int(np.searchsorted(self.sorted, lo))
        # 2**63, the last part's bound, is past int64: that part runs to the end.
        b = len(self.sorted) if hi >= 2**63 else int(np.searchsorted(self.sorted, hi))
        for start in range(a, b, 4096):  # pages, as a query iterator returns them
            yield from (int(i) for i in self.sorted[start : min(b, start + 4096)])


def build(workdir: Path, rows: int) -> tuple[Stores, dict[str, int]]:
    uri = f"sqlite:///{workdir}/meta.db"
    fill_s = fill_metadata(uri, rows)
    objects = workdir / "objects"
    began = time.monotonic()
    ids: list[int] = []
    planted = {"rows_without_vector": 0, "rows_without_object": 0}
    (objects / "meta" / "image").mkdir(parents=True)
    for k in range(rows):
        sha = row_sha(k)
        if k % PLANT_EVERY == 0:
            planted["rows_without_vector"] += 1
        else:
            ids.append(milvus_id_for(sha))
        if k % (PLANT_EVERY + 1) == 0:
            planted["rows_without_object"] += 1
        else:
            (objects / object_key_for(sha, "jpg")).touch()
    for n in range(rows // PLANT_EVERY + 1):  # orphans of both kinds
        lone = row_sha(rows + n)
        ids.append(milvus_id_for(lone))
        (objects / object_key_for(row_sha(rows + 10_000_000 + n), "png")).touch()
    planted["orphan_vectors"] = planted["orphan_objects"] = rows // PLANT_EVERY + 1
    logger.info("filled %d rows in %.0f s, objects and ids in %.0f s", rows, fill_s,
                time.monotonic() - began)  # fmt: skip
    stores = Stores(
        SqlMetadataStore(uri, timeout_s=30),
        LocalObjectStore(objects),
        IdList(np.array(ids, dtype=np.int64)),  # type: ignore[arg-type]
    )
    return stores, planted


def measured(stores: Stores, part_contents: int) -> tuple[Findings, float, float]:
    """(findings, peak MB of allocations during the scan, seconds). Timed in a run of its
    own: tracemalloc slows every allocation, and the scans allocate at different rates."""
    began = time.monotonic()
    scan(stores, part_contents)
    seconds = time.monotonic() - began
    tracemalloc.start()
    f = scan(stores, part_contents)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return f, peak / 2**20, seconds


def summary(f: Findings) -> dict[str, Any]:
    out = {k: (sorted(v, key=repr) if isinstance(v, list) else v) for k, v in asdict(f).items()}
    out["image_keys_by_id"] = {k: sorted(v) for k, v in sorted(f.image_keys_by_id.items())}
    return out


def run(rows: int, part_contents: int, workdir: Path) -> dict[str, Any]:
    stores, planted = build(workdir, rows)
    one, one_mb, one_s = measured(stores, rows + 1)
    parts, parts_mb, parts_s = measured(stores, part_contents)
    if summary(one) != summary(parts):
        raise SystemExit("the scan in parts found something else than the scan in one part")
    found = {k: len(getattr(parts, k)) for k in planted}
    if found != planted:
        raise SystemExit(f"planted {planted}, found {found}")
    return {"rows": rows, "part_contents": part_contents, "found": found,
            "one_part": {"peak_mb": one_mb, "seconds": one_s},
            "parts": {"peak_mb": parts_mb, "seconds": parts_s}}  # fmt: skip


def report(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| rows | peak MB, one part / parts (ratio) | seconds, one part / parts (ratio) |",
             "| --- | --- | --- |"]  # fmt: skip
    for r in results:
        a, b = r["one_part"], r["parts"]
        lines.append(
            f"| {r['rows']:,} | {a['peak_mb']:.1f} / {b['peak_mb']:.1f} "
            f"({b['peak_mb'] / a['peak_mb']:.2f}x) | {a['seconds']:.1f} / {b['seconds']:.1f} "
            f"({b['seconds'] / a['seconds']:.2f}x) |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--part", type=int, default=PART_CONTENTS, help="contents per part")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    SIGNALS.install()
    results = []
    try:
        for rows in args.rows:
            workdir = Path(tempfile.mkdtemp(prefix="ise-reconcile-"))
            try:
                results.append(run(rows, args.part, workdir))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    except KeyboardInterrupt:
        logger.error("interrupted; the temporary stores are removed")
        return 130
    for line in report(results):
        logger.info("%s", line)
    logger.info("%d CPUs, load average %s", os.cpu_count() or 0,
                [round(x, 1) for x in os.getloadavg()])  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
