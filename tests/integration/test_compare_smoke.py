"""`python -m bench.compare --smoke`: both servers start, take every request and are reported.

A smoke test of the benchmark, not a benchmark: it asserts that the run works and prints both
servers' figures for every cell, never what the figures are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.compare import SMOKE, parse_sizes
from tests.benchrun import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Measured ~75 s on a 2-core machine (two server start-ups included); room for a loaded one.
RUN_BOUND_S = 900
# The processes each phase cannot do without, by the names bench.cpu gives them. Not Serve's
# HTTP proxy: the Ingress replica answers HTTP itself (deployments.cluster.direct_ingress_env).
PHASE_DOERS = {
    # Not the Decoder: at the smoke's 1 and 2 clients the Embedder decodes each upload
    # (serve_config.yaml, direct_decode_max).
    "ours": {"ingest": {"Ingress", "Embedder", "Indexer"},
             "search": {"Ingress", "Embedder", "Indexer", "Milvus Lite"}},
    "ref": {"ingest": {"reference server"}, "search": {"reference server"}},
}  # fmt: skip
FIGURE = r"\d+(?:\.\d+)? / \d+(?:\.\d+)? \(\d+\.\d\d\)"  # "ours / ref (ratio)"


def run_compare(out: Path) -> tuple[int, str]:
    return run_bench("bench.compare", "--smoke", "--json", str(out), bound_s=RUN_BOUND_S)


def test_compare_smoke_reports_both_servers_for_every_cell(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    code, output = run_compare(out)
    assert code == 0, output[-5000:]

    cells = {(f"{w}x{h}", int(n)) for w, h in parse_sizes(str(SMOKE["sizes"]))
             for n in str(SMOKE["clients"]).split(",")}  # fmt: skip
    # The table: one line per cell with ingest, p50 and p99 as "ours / ref (ratio)".
    for size, clients in cells:
        line = re.search(rf"^\s*{size}\s+{clients} \|.*$", output, re.M)
        assert line, f"no table line for {size} x{clients}:\n{output[-3000:]}"
        assert len(re.findall(FIGURE, line.group(0))) == 3, line.group(0)

    results = json.loads(out.read_text())
    assert {(c["size"], c["clients"]) for c in results["cells"]} == cells
    for cell in results["cells"]:
        for server in ("ours", "ref"):
            got = cell[server]
            where = f"{server} {cell['size']} x{cell['clients']}: {got}"
            # Every request answered 200 (after any honoured 503 + Retry-After), none left out.
            assert got["ingest_statuses"] == {"200": got["ingest_requests"]}, where
            assert got["search_statuses"] == {"200": got["search_requests"]}, where
            assert got["non_200"] == 0, where
            # The figures are of real searches: each stored photo finds itself first.
            assert got["search_top1_is_query"] == got["search_requests"], where
            for key in ("ingest_img_s", "search_p50_ms", "search_p99_ms"):
                assert got[key] is not None, where
            # Where the CPU went: the processes that did the work are found and named.
            for phase, doers in PHASE_DOERS[server].items():
                use = got[f"{phase}_cpu"]
                assert doers <= set(use["by_role_ms"]), (phase, where)
                assert use["ms_per_request"] > 0 and use["cores"] > 0, (phase, where)
        for phase in ("ingest", "search"):
            cpu_line = rf"^\s*{cell['size']}\s+{cell['clients']} {phase}\s+ours \d+ ms/request at"
            assert re.search(cpu_line, output, re.M), output[-3000:]
    assert results["machine"]["cpu_count"] >= 1
