"""bench.lite_tail's arguments, rule switch and report (no Milvus: the smoke test runs it)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pytest

from bench import lite_tail
from image_search.stores import vectors


def threshold() -> int:
    return vectors.SEARCHED_FLUSH_ROWS  # read at each call: the bench switches it


def test_the_rule_switch_restores_the_shipped_threshold() -> None:
    shipped = threshold()
    with lite_tail.searched_rule(sys.maxsize):
        assert threshold() == sys.maxsize
    assert threshold() == shipped
    with pytest.raises(RuntimeError), lite_tail.searched_rule(32):
        assert threshold() == 32
        raise RuntimeError
    assert threshold() == shipped


@pytest.mark.parametrize("bad", [["--seconds", "0"], ["--trials", "0"], ["--rate", "-1"],
                                 ["--base", "0"], ["--searched-rows", "0"]])  # fmt: skip
def test_non_positive_arguments_are_refused(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        lite_tail.parse_args(bad)
    assert exit_.value.code == 2


def test_the_defaults_try_the_shipped_threshold() -> None:
    assert lite_tail.parse_args([]).searched_rows == vectors.SEARCHED_FLUSH_ROWS


def trial(cores: float, ms: float, p50: float, p99: float) -> dict[str, Any]:
    return {"searches": 10, "lite_cores": cores, "lite_ms_per_search": ms, "p50_ms": p50,
            "p99_ms": p99}  # fmt: skip


def test_the_report_gives_medians_and_new_over_old_ratios() -> None:
    args = argparse.Namespace(seconds=1.0, trials=3, rate=50.0, base=10, searched_rows=64,
                              json=None)  # fmt: skip
    before, after = lite_tail.RULES
    results = {
        before: [trial(0.4, 16, 12, 30), trial(0.5, 20, 10, 90), trial(0.6, 18, 14, 20)],
        after: [trial(0.3, 8, 6, 30), trial(0.4, 12, 7, 15), trial(0.2, 10, 8, 60)],
    }
    out = lite_tail.report(results, args)
    assert out["median"][before] == {"lite_cores": 0.5, "lite_ms_per_search": 18, "p50_ms": 12,
                                     "p99_ms": 30}  # fmt: skip
    assert out["ratio"]["lite_cores"] == pytest.approx(0.3 / 0.5)
    assert out["ratio"]["p99_ms"] == pytest.approx(1.0)
    assert "json" not in out["args"]
