"""`python -m bench.lite_tail`, briefly: both rules run against real Milvus Lite servers and the
table prints. A smoke test of the benchmark, not a benchmark: it asserts that it runs, reports
both rules and leaves no server behind, never what the figures are. (No Ray: no marker.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from bench.lite_tail import RULES
from image_search.stores.lite_server import SERVER_MODULE
from tests.benchrun import run_bench

# Two trials of 2 s and a server start each: seconds; room for a loaded machine.
RUN_BOUND_S = 180


def lite_servers_under(folder: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"{SERVER_MODULE} server --data-dir {folder}"],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.split()


def test_lite_tail_runs_both_rules_and_stops_its_servers(tmp_path: Path) -> None:
    out = tmp_path / "tail.json"
    code, output = run_bench("bench.lite_tail", "--seconds", "2", "--trials", "1", "--base", "100",
                             "--json", str(out), bound_s=RUN_BOUND_S)  # fmt: skip
    assert code == 0, output[-5000:]
    for rule in RULES:
        assert re.search(rf"^{rule}\s+\|\s+[\d.]+\s+\|", output, re.M), output[-3000:]
    assert "ratio (searched tail / before)" in output
    result = json.loads(out.read_text())
    for rule in RULES:
        (trial,) = result["trials"][rule]
        assert trial["searches"] > 0 and trial["p50_ms"] is not None
    folders = set(re.findall(r"for (/tmp/ise-tail-[^/\s]+)/", output))
    assert folders, output[-3000:]
    assert not [pid for f in folders for pid in lite_servers_under(f)]
