"""Milvus Lite served over gRPC on 127.0.0.1, so every Ray process shares one embedded index.

Milvus Lite locks its data directory to one process, while Ray replicas and backfill jobs are
separate processes. Rather than funnel every vector call through one owner actor, the first
process that needs the embedded index starts Milvus Lite's server for that directory (guarded by
a file lock) and everyone connects to it exactly as to a Milvus server: one code path for
embedded and production. The server outlives the process that started it (replicas come and
go with autoscaling); `image-search serve` and the tests stop it when they end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from image_search.errors import ConfigError, StoreUnavailable

logger = logging.getLogger(__name__)

# The server's module: Milvus Lite's command line with its search path replaced by one that does
# not walk every stored row per search (lite_search.py). Process listings find it by this name.
SERVER_MODULE = "image_search.stores.lite_search"


def _state_file(data_dir: Path) -> Path:
    return data_dir.parent / f".{data_dir.name}.server.json"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state(data_dir: Path) -> dict[str, int] | None:
    try:
        state = json.loads(_state_file(data_dir).read_text())
        return {"pid": int(state["pid"]), "port": int(state["port"])}
    except (OSError, ValueError, KeyError):
        return None


def ensure_lite_server(data_dir: str | Path, port: int, start_timeout_s: float = 30.0) -> str:
    """Return the gRPC URI of the Milvus Lite server for data_dir, starting it if needed."""
    data_dir = Path(data_dir).resolve()
    uri = f"http://127.0.0.1:{port}"
    with _file_lock(data_dir.parent / f".{data_dir.name}.lock"):
        state = _read_state(data_dir)
        if state and state["port"] == port and _alive(state["pid"]) and port_open(port):
            return uri
        if port_open(port):
            raise ConfigError(
                f"port {port} is taken by a process that is not the Milvus Lite server for "
                f"{data_dir}; set stores.lite_port (ISE__STORES__LITE_PORT) to a free port"
            )
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = data_dir.parent / f"{data_dir.name}.server.log"
        cmd = [
            sys.executable, "-m", SERVER_MODULE, "server",
            "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        pid = _spawn_detached(cmd, log_path)
        deadline = time.monotonic() + start_timeout_s
        while not port_open(port):
            if not _alive(pid):
                raise StoreUnavailable(f"Milvus Lite server exited; see {log_path}", "vectors")
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise StoreUnavailable("Milvus Lite server did not start in time", "vectors")
            time.sleep(0.1)
        _state_file(data_dir).write_text(json.dumps({"pid": pid, "port": port}))
        logger.info("started Milvus Lite server pid %d on %s for %s", pid, uri, data_dir)
        return uri


_LAUNCHER = """
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    proc = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
print(proc.pid)
"""


def _spawn_detached(cmd: list[str], log_path: Path) -> int:
    """Start cmd as an orphan in its own session and return its pid.

    The server must outlive whichever replica or job happened to start it, and Ray kills the
    direct children of a worker that exits (new session or not). A short-lived launcher that
    exits at once leaves the server parentless, so nobody's exit takes it down.
    """
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(log_path), *cmd],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return int(out.stdout.strip())


def stop_lite_server(data_dir: str | Path, timeout_s: float = 10.0) -> bool:
    """Stop the server for data_dir if one runs; True when one was stopped."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.parent.is_dir():
        # Nothing can have been started there (e.g. a server URI taken for a path): do not
        # create folders and lock files just to find that out.
        return False
    with _file_lock(data_dir.parent / f".{data_dir.name}.lock"):
        state = _read_state(data_dir)
        _state_file(data_dir).unlink(missing_ok=True)
        if not state or not _alive(state["pid"]):
            return False
        os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(state["pid"]) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(state["pid"], os.WNOHANG)
            time.sleep(0.1)
        if _alive(state["pid"]):
            os.kill(state["pid"], signal.SIGKILL)
        return True
