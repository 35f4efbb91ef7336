"""`image-search serve` as a process: starts past a dead cluster's file, stops whole on SIGTERM.

Each run gets its own Ray temp dir (RAY_TMPDIR), so the stale `ray_current_cluster` written
here never touches this machine's /tmp/ray, and its ports are all free ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from image_search.stores.lite_server import SERVER_MODULE
from tests.conftest import ROOT, VENV_BIN, free_port
from tests.sockets import is_loopback, listener_pids, listening

pytestmark = pytest.mark.integration

# Measured ~6 s on a 2-core machine; the bound leaves room for a loaded one.
STOP_BOUND_S = 30.0
# Refusing a taken port happens before Ray starts: just the interpreter and the settings.
REFUSE_BOUND_S = 20.0


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short and under /tmp: Ray's unix socket paths below it must stay under 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="ise-serve-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def serve_env(workdir: Path, **ports: int) -> dict[str, str]:
    env = {
        **os.environ,
        "RAY_TMPDIR": str(workdir),  # Ray's temp dir becomes <workdir>/ray
        "ISE__SERVER__PORT": str(ports.get("http", free_port())),
        "ISE_DASHBOARD_PORT": str(ports.get("dashboard", free_port())),
        "ISE_METRICS_PORT": str(ports.get("metrics", free_port())),
        "ISE__STORES__METADATA_URI": f"sqlite:///{workdir}/meta.db",
        "ISE__STORES__OBJECTS_URI": f"file://{workdir}/objects",
        "ISE__STORES__VECTORS_URI": f"{workdir}/vectors.db",
        "ISE__STORES__LITE_PORT": str(free_port()),
    }
    env.pop("RAY_ADDRESS", None)
    return env


def start_serve(workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(workdir / "serve.log", "wb")  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(
            [str(VENV_BIN / "image-search"), "serve"], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    finally:
        log.close()


# -- processes, from /proc --------------------------------------------------------------------
def proc_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, session id) of every process."""
    table: dict[int, tuple[str, int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(stat.parent.name)] = (fields[0], int(fields[1]), int(fields[3]))
    return table


def cmdline_mentions(marker: str) -> set[int]:
    pids = set()
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if marker in path.read_bytes().decode(errors="replace"):
                pids.add(int(path.parent.name))
    return pids


def belonging_to(root: int, marker: str) -> set[int]:
    """Live processes of root's tree or session, or naming `marker` (its Ray dir, its data).

    The marker catches what left the tree on purpose: the Milvus Lite server runs detached in
    its own session, and Ray's processes name their session dir under RAY_TMPDIR.
    """
    table = proc_table()
    pids = {pid for pid, (_, _, sid) in table.items() if sid == root}
    stack = [root]
    while stack:
        pid = stack.pop()
        children = [c for c, (_, ppid, _) in table.items() if ppid == pid]
        pids.update(children)
        stack.extend(children)
    pids |= cmdline_mentions(marker)
    pids.discard(os.getpid())
    return {p for p in pids if p in table and table[p][0] != "Z"}


def still_alive(pids: set[int]) -> set[int]:
    table = proc_table()
    return {p for p in pids if p in table and table[p][0] != "Z"}


def names(pids: set[int]) -> list[str]:
    out = []
    for pid in sorted(pids):
        with contextlib.suppress(OSError):
            out.append(
                Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120].decode()
            )
    return out


def kill_all(pids: set[int]) -> None:
    """Cleanup after a failure: only the pids this test saw belong to its service."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"{url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


# -- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_serve_ignores_a_dead_cluster_and_stops_everything_on_a_signal(
    workdir: Path, stop: str
) -> None:
    # What a killed `ray start` leaves behind: the address of a cluster that no longer answers.
    (workdir / "ray").mkdir()
    (workdir / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    http = free_port()
    log = workdir / "serve.log"
    proc = start_serve(workdir, serve_env(workdir, http=http))
    seen: set[int] = set()
    try:
        wait_ready(proc, f"http://127.0.0.1:{http}/readyz", log, timeout=300)
        seen = belonging_to(proc.pid, str(workdir))
        started = " ".join(names(seen))
        # The snapshot does see the service's cluster and its embedded Milvus.
        assert "gcs_server" in started and "raylet" in started, started
        assert SERVER_MODULE in started, started
        # Ray ran in this test's temp dir, the one holding the stale file.
        assert (workdir / "ray" / "session_latest").exists()

        began = time.monotonic()
        if stop == "sigterm":
            proc.send_signal(signal.SIGTERM)  # to the service alone, as a service manager does
        else:
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: its whole process group
        assert proc.wait(timeout=STOP_BOUND_S) == 0, log.read_text()[-3000:]
        took = time.monotonic() - began
        # Processes the service killed may take a moment to be reaped.
        deadline = time.monotonic() + 10
        while (left := still_alive(seen) | belonging_to(proc.pid, str(workdir))) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert not left, f"left running after {stop}: {names(left)}"
        assert took < STOP_BOUND_S
        assert not (workdir / ".vectors.db.server.json").exists()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        kill_all(still_alive(seen | belonging_to(proc.pid, str(workdir))))


@pytest.mark.parametrize(
    ("taken", "setting"),
    [
        ("http", "ISE__SERVER__PORT"),
        ("dashboard", "ISE_DASHBOARD_PORT"),
        ("metrics", "ISE_METRICS_PORT"),
    ],
)
def test_a_taken_port_is_refused_clearly_and_quickly(
    workdir: Path, taken: str, setting: str
) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        began = time.monotonic()
        proc = start_serve(workdir, serve_env(workdir, **{taken: port}))
        try:
            code = proc.wait(timeout=REFUSE_BOUND_S + 40)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        took = time.monotonic() - began
        output = (workdir / "serve.log").read_text()
        left = belonging_to(proc.pid, str(workdir))
        kill_all(left)
    assert code != 0, output
    assert f"127.0.0.1:{port}" in output and setting in output and "in use" in output, output
    assert "Traceback" not in output, output
    assert took < REFUSE_BOUND_S, f"took {took:.1f}s"
    assert not left, f"left running: {names(left)}"
    assert not (workdir / "ray").exists()  # Ray never started


def command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def ingress_on(port: int, pids: set[int]) -> int:
    """The one process of `pids` listening on `port`; it must be the Ingress replica."""
    holders = listener_pids(port, pids)
    assert len(holders) == 1, {p: command(p)[:80] for p in holders}
    (pid,) = holders
    assert command(pid).startswith("ray::ServeReplica:image_search:Ingress"), command(pid)
    return pid


def test_the_api_port_is_the_ingress_replicas_own_and_outlives_it(
    workdir: Path, photos: dict[str, bytes]
) -> None:
    """Direct ingress (deployments.cluster.direct_ingress_env): the Ingress replica listens on
    the API port itself, on loopback, and a killed Ingress's successor takes the same port."""
    http = free_port()
    api = f"http://127.0.0.1:{http}"
    proc = start_serve(workdir, serve_env(workdir, http=http))
    seen: set[int] = set()
    try:
        wait_ready(proc, f"{api}/readyz", workdir / "serve.log", timeout=300)
        seen = belonging_to(proc.pid, str(workdir))
        first = ingress_on(http, seen)
        wide = {command(p)[:60]: w for p in seen if (w := [a for a in listening(p)
                                                          if not is_loopback(a[0])])}  # fmt: skip
        assert not wide, wide
        name, data = next(iter(photos.items()))
        up = httpx.post(f"{api}/meta/image/file", files={"file": (f"{name}.jpg", data)},
                        timeout=120)  # fmt: skip
        assert up.status_code == 200, up.text
        meta_uuid = up.json()["data"]["meta_uuid"]
        # Bad input is answered by the same app, in the same envelope, on this path too.
        bad = httpx.post(f"{api}/sample/file", files={"file": ("x.jpg", b"not an image")},
                         timeout=60)  # fmt: skip
        assert bad.status_code == 415 and bad.json()["succeed"] is False, bad.text
        # The body limits hold in the server in front of the app (deployments.admission).
        huge = b"\0" * (25 * 2**20)
        over = httpx.post(f"{api}/meta/image/file", files={"file": ("h.jpg", huge)}, timeout=120)
        assert over.status_code == 413 and over.json()["succeed"] is False, over.text

        os.kill(first, signal.SIGKILL)
        # wait_ready: the API answers again within the bound, and the service never exited.
        wait_ready(proc, f"{api}/readyz", workdir / "serve.log", timeout=120)
        second = ingress_on(http, belonging_to(proc.pid, str(workdir)))
        assert second != first, "the API port must be held by the new Ingress replica"
        found = httpx.post(f"{api}/sample/file", files={"file": ("q.jpg", data)},
                           data={"limit": 3}, timeout=120)  # fmt: skip
        assert found.status_code == 200, found.text
        assert found.json()["data"][0]["meta_uuid"] == meta_uuid, found.text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        time.sleep(1)
        kill_all(still_alive(seen | belonging_to(proc.pid, str(workdir))))
