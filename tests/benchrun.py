"""Run a benchmark module as a user does, for the smoke tests: bounded in time, and stopped
with SIGTERM when over (each benchmark then stops the servers it started before exiting)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_bench(module: str, *args: str, bound_s: float) -> tuple[int, str]:
    """`python -m <module> <args>` from the project root: (exit status, its output)."""
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=bound_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        pytest.fail(f"{module} still running after {bound_s}s:\n{output[-5000:]}")
    return proc.returncode, output
