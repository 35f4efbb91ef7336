"""bench.embedding measures what the service would run here, and names what it would refuse."""

from __future__ import annotations

import pytest

from bench.embedding import CONFIGS, refusal
from image_search.embedding import runtime

MODEL = "efficientnet-lite0"


def on_cpu(monkeypatch: pytest.MonkeyPatch, *flags: str) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))


def test_without_bf16_instructions_openvino_bf16_is_refused_and_the_rest_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on_cpu(monkeypatch, "avx2", "fma")
    refused = {(rt, prec): refusal(MODEL, rt, prec) for _, _, rt, prec, _ in CONFIGS}
    assert refused[("openvino", "bf16")] is not None
    assert "bf16 instructions" in refused[("openvino", "bf16")]
    # The baseline (the first row, which every ratio divides by) is never refused.
    assert refused[(CONFIGS[0][2], CONFIGS[0][3])] is None
    assert {pair for pair, why in refused.items() if why} == {("openvino", "bf16")}


def test_with_bf16_instructions_every_configuration_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    on_cpu(monkeypatch, "avx512_bf16", "avx512_vnni")
    assert all(refusal(MODEL, rt, prec) is None for _, _, rt, prec, _ in CONFIGS)
