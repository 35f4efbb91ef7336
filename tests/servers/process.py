"""Server processes for the tests: free ports, readiness polling, start, stop and restart."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

# The plugin's logger, as before the split into modules.
logger = logging.getLogger("tests.servers")
T = TypeVar("T")
VENV_BIN = Path(sys.executable).parent


def _need(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("ISE_SKIP_MISSING_SERVERS") == "1":
        pytest.skip(why)
    pytest.fail(why)


def _poll(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path,
          timeout: float) -> None:  # fmt: skip
    """Call `check` until it is true; fail early (with the log tail) if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s:\n{_tail(log)}")


def _dying_with_parent(cmd: list[str]) -> list[str]:
    """cmd, made to get SIGTERM when the test process dies, so no server outlives a killed run.

    setpriv sets PR_SET_PDEATHSIG and execs cmd. Not a preexec_fn: that forces a plain fork
    running Python in the child, which aborts now and then once gRPC threads (pymilvus clients
    of earlier tests) live in this process; without one, Popen uses vfork and runs no fork
    handlers at all.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *cmd] if setpriv else cmd


def _tail(log: Path, n: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def eventually(fn: Callable[[], T], timeout: float = 60.0, interval: float = 0.5) -> T:
    """Retry `fn` until it returns without raising, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval)


class ManagedServer:
    """One server process that the tests start, stop and restart on fixed ports."""

    name = "server"
    start_timeout = 60.0
    stop_timeout = 10.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "server.log"
        self.cwd = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _after_start(self) -> None:
        """Hook run once the server answers (e.g. restore state)."""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        cmd, env = self._command()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                _dying_with_parent(cmd), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, **env}, cwd=self.cwd,
            )  # fmt: skip
        started = time.monotonic()
        _poll(self.name, self._ready, self.proc, self.log, self.start_timeout)
        self._after_start()
        logger.info("%s ready in %.1fs (pid %d)", self.name, time.monotonic() - started,
                    self.proc.pid)  # fmt: skip

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL after `timeout`: only our own process."""
        timeout = self.stop_timeout if timeout is None else timeout
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def ensure_running(self) -> None:
        """Start the server again if it exited on its own since the last test.

        A fault test stops servers on purpose and restarts them itself; this is for a server
        that died of its machine (a disk stall, memory), which is not what the next tests
        check: they get a running server, and the log says what happened.
        """
        if self.proc is not None and self.proc.poll() is not None:
            logger.warning("%s exited by itself with %s; restarting it. Log tail:\n%s",
                           self.name, self.proc.returncode, _tail(self.log))  # fmt: skip
            self.proc = None
            self.start()

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server is stopped inside the block and running again after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()
