"""`python -m bench.ingress`, tiny: one service measured through Serve's proxy and through the
Ingress replica's own port, both answering every request. A smoke test, never a timing."""

from __future__ import annotations

import re

import pytest

from tests.benchrun import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Measured ~60 s on a 2-core machine (one service start-up included).
RUN_BOUND_S = 600


def test_ingress_bench_measures_both_doors() -> None:
    code, output = run_bench("bench.ingress", "--rounds", "1", "--images", "3", "--clients", "1,2",
                             "--size", "640x480", bound_s=RUN_BOUND_S)  # fmt: skip
    assert code == 0, output[-5000:]  # nonzero when any request was not a 200
    for door in ("proxy", "direct"):
        for clients in (1, 2):
            line = rf"^round 1 {door}\s+x{clients}\s+uploads \d+\.\d/s searches \d+\.\d/s p50"
            assert re.search(line, output, re.M), output[-3000:]
    for clients in (1, 2):
        for label in ("uploads/s", "searches/s", "search p50 ms"):
            line = rf"^x{clients}\s+{re.escape(label)}\s+proxy .* direct/proxy \d+\.\d\d$"
            assert re.search(line, output, re.M), output[-3000:]
