"""`python -m bench.search_scale --short`: fill, serve, search, measure and report end to end.

A smoke test of the benchmark, not a benchmark: it asserts that a run on the embedded stores
works and prints its table, never what the figures are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.search_scale import SHORT
from tests.benchrun import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Measured well under a minute on a 2-core machine (one service start-up); room for a loaded one.
RUN_BOUND_S = 600


def run_short(out: Path, cache: Path) -> tuple[int, str]:
    return run_bench("bench.search_scale", "--short", "--out", str(out), "--cache", str(cache),
                     bound_s=RUN_BOUND_S)  # fmt: skip


def test_search_scale_short_fills_serves_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    code, output = run_short(out, tmp_path / "cache")
    assert code == 0, output[-5000:]

    # The table: a line for the embedded store with p50/p99 per concurrency and both recalls.
    line = re.search(r"^\s*lite \| HNSW .*$", output, re.M)
    assert line, output[-3000:]
    assert len(re.findall(r"\d+/\d+", line.group(0))) >= len(str(SHORT["clients"]).split(","))
    assert "metadata queries, median ms" in output

    (result,) = json.loads(out.read_text())["results"]
    assert result["store"] == "lite" and result["vectors"] == SHORT["vectors"]
    for c in str(SHORT["clients"]).split(","):
        stored = result["http"][f"stored_c{c}"]
        assert stored["n"] > 0 and not stored["non_200"], stored
    assert result["http"]["file_c1"]["n"] > 0
    assert 0.0 <= result["recall_served"] <= 1.0
    assert all(0.0 <= row["recall"] <= 1.0 for row in result["recall_direct"])
    assert set(result["metadata_ms"]["small"]) == set(result["metadata_ms"]["large"])
    assert result["rss_mb"]["indexer_pids"], "the Indexer replica was not found"
