"""bench.lite_search runs, prints both executors' figures and finds them answering alike."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.benchrun import run_bench

# Two small collections built in-process and 2 x 2 x 5 searches each: seconds; room for a load.
RUN_BOUND_S = 240


def test_lite_search_compares_both_executors(tmp_path: Path) -> None:
    out = tmp_path / "lite_search.json"
    code, output = run_bench("bench.lite_search", "--sizes", "500,3000", "--rounds", "2",
                             "--queries", "5", "--json", str(out), bound_s=RUN_BOUND_S)  # fmt: skip
    assert code == 0, output[-5000:]
    for rows in (500, 3000):
        assert re.search(rf"^\s+{rows} \|.*\| yes$", output, re.M), output[-3000:]
    results = json.loads(out.read_text())
    assert [r["rows"] for r in results] == [500, 3000]
    for r in results:
        assert r["same_hits"] is True
        assert r["Milvus Lite"]["p50_ms"] > 0 and r["ours"]["p50_ms"] > 0
        assert r["ratio_p50"] > 0
