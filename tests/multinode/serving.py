"""Serve on the two-node cluster: `serve deploy` of a config file, status over the dashboard."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, VENV_BIN
from tests.multinode.cluster import LocalCluster

APP = "image_search"
TERMINAL = ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY")


def deploy(cluster: LocalCluster, config: Path) -> None:
    """`serve deploy`, the operator's command: the cluster builds the app from the file."""
    res = subprocess.run(
        [str(VENV_BIN / "serve"), "deploy", str(config), "--address", cluster.dashboard],
        env=cluster.env(), cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]


def applications(cluster: LocalCluster) -> dict[str, Any]:
    r = httpx.get(cluster.dashboard + "/api/serve/applications/", timeout=30)
    r.raise_for_status()
    apps: dict[str, Any] = r.json().get("applications") or {}
    return apps


def wait_app(cluster: LocalCluster, name: str, timeout: float) -> dict[str, Any]:
    """Poll until the application leaves DEPLOYING (or NOT_STARTED); returns its status entry."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            last = applications(cluster).get(name) or {}
        except httpx.HTTPError as exc:
            last = {"error": repr(exc)}
        if last.get("status") in TERMINAL:
            return last
        time.sleep(1.0)
    raise TimeoutError(f"app {name} still not deployed after {timeout}s: {str(last)[:2000]}")
