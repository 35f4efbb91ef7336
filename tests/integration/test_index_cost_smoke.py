"""`python -m bench.index_cost` on a few thousand vectors: fill, build, rebuild, measure, report.

A smoke test of the benchmark, not a benchmark: it asserts that a run on a Milvus server
measures each index and prints its table, never what the figures are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.benchrun import run_bench

pytestmark = [pytest.mark.servers, pytest.mark.slow]

# Measured about a minute on a 2-core machine (the server's start, two index builds); room
# for a loaded one.
RUN_BOUND_S = 600


def test_index_cost_builds_each_index_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    code, output = run_bench(
        "bench.index_cost", "--vectors", "6000", "--views", "60", "--queries", "40",
        "--load-queries", "160", "--index", 'IVF_FLAT|{"nlist": 32}|[{"nprobe": 4}]',
        "--cache", str(tmp_path / "cache"), "--out", str(out), bound_s=RUN_BOUND_S,
    )  # fmt: skip
    assert code == 0, output[-5000:]

    # The table: the configured HNSW at two ef, then the candidate, each measured twice.
    lines = re.findall(r"^\| (HNSW|IVF_FLAT) .*$", output, re.M)
    assert lines == ["HNSW", "HNSW", "IVF_FLAT"], output[-3000:]
    builds = [line for line in output.splitlines() if line.startswith("index builds")]
    assert len(builds) == 1 and "HNSW" in builds[0] and "IVF_FLAT" in builds[0], output[-3000:]

    result = json.loads(out.read_text())
    assert result["vectors"] == 6000
    rows = result["rows"]
    assert [r["index"] for r in rows] == ["HNSW"] * 4 + ["IVF_FLAT"] * 2
    assert all(0.0 <= r["recall"] <= 1.0 for r in rows)
    assert all(r["milvus_cpu_ms"] > 0 and r["queries_per_s"] > 0 for r in rows)
    assert set(result["builds_s"]) == {"HNSW M=16,efConstruction=200,ef=128 Session",
                                       "IVF_FLAT nlist=32,nprobe=4 Session"}  # fmt: skip
