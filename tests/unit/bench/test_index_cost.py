"""The pure parts of bench/index_cost.py: what it is asked to measure and how it reports.

No server: the rows are written here as the benchmark writes them.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from bench import index_cost as ic
from image_search.config import load_settings


def test_a_candidate_is_an_index_and_its_search_parameters() -> None:
    cand = ic.Candidate.parse('SCANN|{"nlist": 64}|[{"nprobe": 4}, {"nprobe": 8}]')
    assert cand.index_type == "SCANN" and cand.index_params == {"nlist": 64}
    assert [c.search_params for c in cand.choices()] == [{"nprobe": 4}, {"nprobe": 8}]
    assert {c.index_type for c in cand.choices()} == {"SCANN"}


@pytest.mark.parametrize("text", ['SCANN|{"nlist": 64}|[]', 'SCANN|{"nlist": 64}|{"nprobe": 4}'])
def test_a_candidate_without_search_parameters_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        ic.Candidate.parse(text)


def test_a_malformed_candidate_fails_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ic.parse_args(["--index", "SCANN|{nlist: 64}"])
    assert exc.value.code == 2
    assert "--index" in capsys.readouterr().err


def test_the_baseline_is_the_configured_index_and_hnsw_at_ef_64() -> None:
    st = load_settings(ic.ROOT / "config.yaml").stores
    base = ic.baseline()
    assert (base.index_type, base.index_params) == (st.index_type, st.index_params)
    assert base.searches[0] == st.search_params
    if st.index_type == "HNSW":
        assert base.searches[1] == {**st.search_params, "ef": 64}


def test_defaults_measure_scann_against_the_baseline() -> None:
    args = ic.parse_args([])
    assert [c.index_type for c in args.index] == ["SCANN"]
    assert args.vectors == 1_000_000


def _row(index: str, search: dict[str, Any], cpu: float, recall: float) -> dict[str, Any]:
    return {"index": index, "index_params": {}, "search_params": search, "recall": recall,
            "milvus_cpu_ms": cpu, "queries_per_s": 1000 / cpu}  # fmt: skip


def test_the_report_gives_each_measurement_and_the_ratio_to_the_first_row() -> None:
    rows = [
        _row("HNSW", {"ef": 128}, 2.0, 0.997),
        _row("SCANN", {"nprobe": 8}, 1.0, 0.95),
        _row("SCANN", {"nprobe": 8}, 2.0, 0.95),
        _row("HNSW", {"ef": 128}, 2.2, 0.997),
    ]
    out = {
        "vectors": 1000,
        "nq": 8,
        "threads": 2,
        "rows": rows,
        "builds_s": {"HNSW ef=128 Session": 60.0, "SCANN nprobe=8 Session": 30.0},
    }
    lines = ic.report(out)
    hnsw = next(line for line in lines if line.startswith("| HNSW"))
    scann = next(line for line in lines if line.startswith("| SCANN"))
    assert "2.00 / 2.20" in hnsw and "| 1.00 |" in hnsw and "0.9970" in hnsw
    # SCANN's mean 1.5 against HNSW's 2.1.
    assert "1.00 / 2.00" in scann and f"| {1.5 / 2.1:.2f} |" in scann and "0.9500" in scann
    assert lines[-1] == "index builds (to loaded): HNSW 1.0 min, SCANN 0.5 min"
