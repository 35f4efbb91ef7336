"""bench.compare's settle step: cells start once the server is quiet after its warm-up."""

from __future__ import annotations

import pytest

from bench import compare, cpu


class Probe:
    """Gives these samples in turn (the last one over and over), counting the calls."""

    def __init__(self, samples: list[dict[int, tuple[str, float]]]) -> None:
        self.samples = samples
        self.calls = 0

    def __call__(self) -> cpu.Sample:
        self.calls += 1
        return cpu.Sample(self.samples[min(self.calls, len(self.samples)) - 1])


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare, "SETTLE_MIN_S", 0.01)
    monkeypatch.setattr(compare, "SETTLE_STEP_S", 0.01)
    monkeypatch.setattr(compare, "SETTLE_MAX_S", 1.0)


def test_it_waits_for_a_starting_process_and_for_the_cpu_to_fall() -> None:
    steps = 0.01  # CPU seconds below are per step of 0.01 s: 1.5 cores, then 0.1
    samples = [
        {1: ("Ingress", 0.0)},
        {1: ("Ingress", 1.5 * steps), 2: ("Decoder", 0.0)},  # a new replica: not yet
        {1: ("Ingress", 3.0 * steps), 2: ("Decoder", 1.5 * steps)},  # busy: not yet
        {1: ("Ingress", 3.1 * steps), 2: ("Decoder", 1.5 * steps)},  # quiet, same processes
        {1: ("Ingress", 9.0), 2: ("Decoder", 9.0)},  # never reached
    ]
    probe = Probe(samples)
    compare.settle(probe)
    assert probe.calls == 4


def test_a_server_that_never_quiets_is_measured_after_the_limit() -> None:
    ticks = [{1: ("Ingress", float(n))} for n in range(1000)]  # 100 cores, always
    waited = compare.settle(Probe(ticks))
    assert compare.SETTLE_MAX_S <= waited < compare.SETTLE_MAX_S + 0.5
