"""Servers a benchmark starts: each in its own session, ready when it answers, always stopped.

Only processes this module started are ever signalled: the server by its pid, then whatever
still names the server's private work folder (the service's Ray processes and its Milvus Lite
server, which runs detached in a session of its own), by pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deployments.cluster import free_port

logger = logging.getLogger("bench.processes")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # In the child before exec: SIGTERM it if the benchmark dies without its clean-up (SIGKILL),
    # so a server never outlives the run that started it. The server's own SIGTERM handling
    # then stops what it started.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Server:
    """A started server process: its name, base URL, log file and private work folder."""

    name: str
    url: str
    log: Path
    workdir: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start(
    name: str, cmd: list[str], url: str, workdir: Path, env: dict[str, str], cwd: Path
) -> Server:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
    return Server(name, url, log, workdir, proc)


def start_service(
    workdir: Path, settings: Mapping[str, str], serve_args: Sequence[str] = (),
    code: Path | None = None,
) -> Server:  # fmt: skip
    """`image-search serve`, as the README runs it, on free loopback ports with its Ray
    session and objects in `workdir`; `settings` (ISE__... variables) point it at its stores.
    `code`: another checkout of the project (e.g. a `git worktree` of an older commit) to serve
    instead of this one, its serve_config.yaml included, on this checkout's virtualenv.
    """
    port = free_port()
    env = {
        **os.environ,
        "RAY_TMPDIR": str(workdir),  # its Ray session lives here, not in Ray's shared temp dir
        "ISE__SERVER__PORT": str(port),
        "ISE_DASHBOARD_PORT": str(free_port()),
        "ISE_METRICS_PORT": str(free_port()),
        "ISE__STORES__OBJECTS_URI": f"file://{workdir}/objects",
        **settings,
    }
    env.pop("RAY_ADDRESS", None)  # always its own local cluster
    root = Path(__file__).resolve().parents[1]
    if code is not None:
        # The virtualenv's editable install resolves the project's packages to this checkout,
        # but only after sys.path: PYTHONPATH puts the other one first, for the command and for
        # every Ray worker it starts (they inherit its environment).
        root = code.resolve()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    cmd = [str(Path(sys.executable).parent / "image-search"), "serve", *serve_args]
    return start("service", cmd, f"http://127.0.0.1:{port}", workdir, env, root)


def wait_ready(server: Server, path: str, timeout: float) -> httpx.Response:
    """Poll `path` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            r = httpx.get(server.url + path, timeout=5)
            if r.status_code == 200:
                return r
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{server.name} not ready after {timeout:.0f}s ({last}):\n"
                       f"{server.log_tail()}")  # fmt: skip


def stop(server: Server, timeout: float = 60.0) -> None:
    """SIGTERM the server and wait; then SIGKILL whatever of it is left (logged)."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0fs; killing it", server.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    # What the server started and should have stopped: its session, or processes naming its
    # private folder. Give them a moment to be reaped before calling them leftovers.
    deadline = time.monotonic() + 15
    while (left := _leftovers(proc.pid, str(server.workdir))) and time.monotonic() < deadline:
        time.sleep(0.3)
    if left:
        logger.warning("%s left %d processes running; killing them", server.name, len(left))
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class ProcInfo:
    """What /proc says of one live process."""

    session: int
    cmdline: str  # its arguments joined by spaces
    cpu_s: float  # user + system CPU time so far


TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def proc_info(pid: int) -> ProcInfo | None:
    """A process's session, command line and CPU time; None if it is gone or a zombie."""
    proc = Path(f"/proc/{pid}")
    try:
        # The command name in (...) may hold spaces; the fields after it are fixed.
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if fields[0] == "Z":
        return None
    cpu_s = (int(fields[11]) + int(fields[12])) / TICKS_PER_S
    return ProcInfo(int(fields[3]), cmdline.strip(), cpu_s)


def live_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").glob("[0-9]*")]


def _leftovers(session: int, marker: str) -> set[int]:
    pids = set()
    for pid in live_pids():
        info = proc_info(pid)
        if info is not None and (info.session == session or marker in info.cmdline):
            pids.add(pid)
    pids.discard(os.getpid())
    return pids
