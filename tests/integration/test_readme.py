"""The README's run command, as a newcomer runs it: start, poll /readyz, upload, search, stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, wait_http

pytestmark = pytest.mark.integration


def readme_commands() -> list[str]:
    """The commands in the README's first shell block: the run command, then the test command."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S)
    assert block, "README.md has no shell block"
    lines = [ln.split("#", 1)[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln]


def test_readme_leads_with_run_and_test_commands() -> None:
    assert readme_commands()[:2] == ["make serve", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_run_command_serves(tmp_path: Path, photos: dict[str, bytes]) -> None:
    run = readme_commands()[0]
    port, metrics = free_port(), free_port()
    env = {
        **os.environ,
        # Same command, but its data and ports are this test's own.
        "ISE__SERVER__PORT": str(port),
        "ISE__STORES__METADATA_URI": f"sqlite:///{tmp_path}/meta.db",
        "ISE__STORES__OBJECTS_URI": f"file://{tmp_path}/objects",
        "ISE__STORES__VECTORS_URI": f"{tmp_path}/vectors.db",
        "ISE__STORES__LITE_PORT": str(free_port()),
        "ISE_METRICS_PORT": str(metrics),
        "ISE_DASHBOARD_PORT": str(free_port()),  # 8265 may be another cluster's here
    }
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        run.split(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/readyz", timeout=300)
        client = httpx.Client(base_url=base, timeout=120)
        up = client.post("/meta/image/file", files={"file": ("coffee.jpg", photos["coffee"])})
        assert up.status_code == 200, up.text
        hits = client.post("/sample/file", files={"file": ("q.jpg", photos["coffee"])},
                           data={"limit": "1"}).json()["data"]  # fmt: skip
        assert hits[0]["file_name"] == "coffee.jpg" and hits[0]["distance"] < 1e-3
        assert client.get("/docs").status_code == 200
        lite_pid = json.loads((tmp_path / ".vectors.db.server.json").read_text())["pid"]
        # Ray exports metrics on an interval: poll until Serve's request counters appear.
        deadline, prom = time.monotonic() + 90, ""
        while "ray_serve_num_http_requests" not in prom and time.monotonic() < deadline:
            time.sleep(2)
            try:
                prom = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text
            except httpx.HTTPError:
                continue
        assert "ray_serve_num_http_requests" in prom
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    # It stops cleanly: the port is free again and the Milvus Lite server is gone.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/healthz", timeout=1)
        except httpx.HTTPError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the service still answers after SIGTERM")
    # ... and the Milvus Lite server it started stops too (bounded: the stop takes seconds).
    state = tmp_path / ".vectors.db.server.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (state.exists() or alive(lite_pid)):
        time.sleep(0.5)
    if alive(lite_pid):
        os.kill(lite_pid, signal.SIGKILL)  # leave nothing behind, then report it
        pytest.fail("the Milvus Lite server outlived the service")
    assert not state.exists()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
