"""bench.reconcile_scale runs small: both scans agree and find what was planted (a smoke test,
never a timing)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from bench import reconcile_scale as rs
from image_search.records import id_parts


def test_small_run_finds_the_planted_disagreements(tmp_path: Path) -> None:
    out = rs.run(3_000, 300, tmp_path)
    assert out["found"] == {"rows_without_vector": 1, "rows_without_object": 1,
                            "orphan_vectors": 1, "orphan_objects": 1}  # fmt: skip
    assert out["parts"]["peak_mb"] < out["one_part"]["peak_mb"]


def test_main_prints_the_table(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bench.reconcile_scale"):
        assert rs.main(["--rows", "2000", "--part", "500"]) == 0
    assert any(line.startswith("| 2,000 |") for line in caplog.messages)


def test_id_list_lists_each_part() -> None:
    ids = np.random.default_rng(0).integers(0, 2**63 - 1, size=5_000, dtype=np.int64)
    index = rs.IdList(ids)
    got = [sorted(index.ids(within)) for within in id_parts(2)]
    assert sorted(i for part in got for i in part) == sorted(int(i) for i in ids)
    assert sorted(index.ids()) == sorted(int(i) for i in ids)
