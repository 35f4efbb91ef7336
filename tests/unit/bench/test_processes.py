"""bench.processes: a service started from another checkout runs that checkout's code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import processes

ROOT = Path(__file__).resolve().parents[3]


def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: Path | None) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def start(name: str, cmd: list[str], url: str, workdir: Path, env: dict[str, str],
              cwd: Path) -> Any:  # fmt: skip
        seen.update(cmd=cmd, env=env, cwd=cwd)
        return None

    monkeypatch.setattr(processes, "start", start)
    processes.start_service(tmp_path, {"ISE__X": "1"}, code=code)
    return seen


def test_the_service_runs_this_checkout_unless_told_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    mine = started(monkeypatch, tmp_path, None)
    assert mine["cwd"] == ROOT and mine["env"]["PYTHONPATH"] == "/elsewhere"
    assert mine["env"]["ISE__X"] == "1" and mine["cmd"][-1] == "serve"
    other = tmp_path / "older"
    theirs = started(monkeypatch, tmp_path, other)
    assert theirs["cwd"] == other.resolve()
    assert theirs["env"]["PYTHONPATH"] == f"{other.resolve()}{os.pathsep}/elsewhere"


def test_pythonpath_wins_over_the_editable_install(tmp_path: Path) -> None:
    """What start_service relies on: the virtualenv's editable install maps the project's
    packages to its checkout only after sys.path, so PYTHONPATH's checkout is imported."""
    (tmp_path / "deployments").mkdir()
    (tmp_path / "deployments" / "__init__.py").write_text("")
    probe = "import deployments; print(deployments.__file__)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    # Run from / so that the current folder, first on sys.path for `-c`, holds no package.
    got = subprocess.run([sys.executable, "-c", probe], env=env, cwd="/", check=True,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert got == str(tmp_path / "deployments" / "__init__.py")
