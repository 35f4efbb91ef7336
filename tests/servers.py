"""Pytest plugin: real MariaDB, S3 (moto) and Milvus servers on free loopback ports, per session.

Each server runs from its own temporary data directory, is started once per session and stopped
at the end, and can be stopped and restarted in between (`with server.down(): ...`) for fault
tests. Readiness is polled, never slept for. A missing server binary fails the tests that need
it (`make test` installs them all); ISE_SKIP_MISSING_SERVERS=1 turns that into a skip for a
developer who has not installed them.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

logger = logging.getLogger(__name__)
T = TypeVar("T")
VENV_BIN = Path(sys.executable).parent
S3_BUCKET = "ise-images"
METADATA_DB = "ise"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, so no server outlives a killed run."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **env}, cwd=self.cwd, preexec_fn=_die_with_parent,
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


# -- MariaDB ------------------------------------------------------------------------------------
class MariaDB(ManagedServer):
    """Debian's mariadbd with its own data dir, a unix socket for root and TCP for the app."""

    name = "mariadb"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.datadir = workdir / "data"
        self.socket = workdir / "s.sock"
        self.port = free_port()
        self.user = "ise"
        self.password = secrets.token_hex(12)
        self._installed = False

    def _install(self) -> None:
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
             f"--user={getpass.getuser()}", "--auth-root-authentication-method=normal",
             "--skip-test-db"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self._installed = True

    def _command(self) -> tuple[list[str], dict[str, str]]:
        if not self._installed:
            self._install()
        return [
            "mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
            f"--port={self.port}", "--bind-address=127.0.0.1", f"--user={getpass.getuser()}",
            "--skip-log-bin", f"--pid-file={self.workdir / 'mariadb.pid'}",
            "--innodb-buffer-pool-size=32M", "--performance-schema=OFF",
        ], {}  # fmt: skip

    def _root(self) -> Any:
        import pymysql

        return pymysql.connect(unix_socket=str(self.socket), user="root", connect_timeout=2,
                               autocommit=True)  # fmt: skip

    def _ready(self) -> bool:
        with self._root() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        return True

    def _after_start(self) -> None:
        # The app connects over TCP with a password, as it would to MySQL in production.
        self.sql(f"CREATE USER IF NOT EXISTS '{self.user}'@'127.0.0.1' "
                 f"IDENTIFIED BY '{self.password}'")  # fmt: skip
        self.sql(f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'127.0.0.1'")
        self.sql(f"CREATE DATABASE IF NOT EXISTS `{METADATA_DB}`")

    def sql(self, statement: str, db: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement as root over the socket (for setup and for checks in tests)."""
        with self._root() as conn, conn.cursor() as cur:
            if db:
                conn.select_db(db)
            cur.execute(statement)
            return list(cur.fetchall())

    def uri(self, db: str = METADATA_DB) -> str:
        return (f"mysql+pymysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"
                "?charset=utf8mb4")  # fmt: skip

    def create_database(self, db: str) -> str:
        self.sql(f"CREATE DATABASE `{db}`")
        return self.uri(db)


# -- S3 (moto) ----------------------------------------------------------------------------------
class MotoS3(ManagedServer):
    """moto's S3 server. It keeps state in memory only, so every request is recorded (moto's
    recorder) and replayed after a restart: a restart then behaves like a server with a disk."""

    name = "s3"
    access_key = "ise-test-access"
    secret_key = "ise-test-secret-0123456789"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.recording = workdir / "recording.jsonl"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        env = {"MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        return [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)], env

    def _ready(self) -> bool:
        return httpx.get(f"http://{self.endpoint}/moto-api/data.json", timeout=1).status_code == 200

    def _after_start(self) -> None:
        if self.recording.exists() and self.recording.stat().st_size:
            r = httpx.post(f"http://{self.endpoint}/moto-api/recorder/replay-recording",
                           timeout=120)  # fmt: skip
            r.raise_for_status()

    def client(self) -> Any:
        from minio import Minio

        return Minio(self.endpoint, self.access_key, self.secret_key, secure=False,
                     region="us-east-1")  # fmt: skip


# -- Milvus -------------------------------------------------------------------------------------
_MILVUS_SECTIONS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode",
                    "dataCoord", "dataNode")  # fmt: skip


def _milvus_binaries() -> Path:
    """The package's server binaries, decompressed once per machine (246 MB, seconds), not
    once per test session; a file lock keeps concurrent sessions from writing them twice."""
    import milvus

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = cache / "image-search-engine" / f"milvus-{milvus.__version__}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Skips every file whose checksum already matches, so a running server's binary is
        # never rewritten under it.
        milvus._initialize_data_files(str(cache))
    return cache / "bin"


class MilvusServer(ManagedServer):
    """The standalone Milvus 2.3.5 binary shipped by the PyPI package `milvus`.

    The package's own launcher (`default_server`) picks ports at every start and refuses ports
    in TIME_WAIT, so a restart could move the server; here every port (gRPC, the embedded
    etcd's client and peer ports, metrics) is fixed once, and etcd is kept on 127.0.0.1.
    """

    name = "milvus"
    start_timeout = 120.0
    # A graceful stop takes Milvus 10-20 s; a crash is the harsher fault anyway, and its
    # write-ahead log (rocksmq) keeps acknowledged writes across it.
    stop_timeout = 3.0

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        from milvus import MilvusServerConfig

        self.config = MilvusServerConfig(data_dir=str(workdir / "base"))
        self.ports = {k: free_port() for k in self.config.configurable_items if k.endswith("_port")}
        self.etcd_peer_port = free_port()
        self.metrics_port = free_port()
        self.config.update(**self.ports)
        for section in _MILVUS_SECTIONS:
            self.config.set(f"{section}.ip", "127.0.0.1")
        # After a crash the new process waits for the old one's etcd sessions to expire
        # before it reloads collections: 30 s by default, which fault tests would sit out.
        self.config.set("common.session.ttl", 5)
        self._prepared = False
        self.bin = Path()

    @property
    def port(self) -> int:
        return int(self.ports["proxy_port"])

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _prepare(self) -> None:
        cfg = self.config
        cfg.resolve_storage()
        for key, port in self.ports.items():
            cfg.configurable_items[key][1] = port
        cfg.write_config()
        base = Path(cfg.base_data_dir)
        etcd_cfg = base / "configs" / "embed_etcd.yaml"
        c, p = self.ports["etcd_port"], self.etcd_peer_port
        etcd_cfg.write_text(
            f"name: ise-test\nlisten-client-urls: http://127.0.0.1:{c}\n"
            f"advertise-client-urls: http://127.0.0.1:{c}\n"
            f"listen-peer-urls: http://127.0.0.1:{p}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{p}\n"
            f"initial-cluster: ise-test=http://127.0.0.1:{p}\n"
        )
        # Without a config file the embedded etcd listens on the fixed 2379/2380, which would
        # collide with any other Milvus on this machine.
        conf = base / "configs" / "milvus.yaml"
        text = conf.read_text()
        text = text.replace(
            "  use:\n    embed: true",
            f"  config:\n    path: {etcd_cfg}\n  use:\n    embed: true",
            1,
        )
        conf.write_text(text)
        self.bin = _milvus_binaries()
        self.cwd = base  # `milvus run` resolves relative paths against its working directory
        self._prepared = True

    def _command(self) -> tuple[list[str], dict[str, str]]:
        if not self._prepared:
            self._prepare()
        base = Path(self.config.base_data_dir)
        lib = str(self.bin)
        env = {
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.metrics_port),
            "MILVUS_RUN_DIR": str(base / "run"),
            "LD_LIBRARY_PATH": ":".join(filter(None, [lib, os.environ.get("LD_LIBRARY_PATH")])),
        }
        return [str(self.bin / "milvus"), "run", "standalone"], env

    def _ready(self) -> bool:
        r = httpx.get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1)
        if "OK" not in r.text:
            return False
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.uri, timeout=3)
        try:
            client.list_collections(timeout=3)
        finally:
            client.close()
        return True


# -- fixtures -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _running(server: ManagedServer) -> Iterator[ManagedServer]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """A MariaDB server; `.uri(db)`, `.create_database(db)`, `.sql(...)`, `.down()`."""
    _need(
        shutil.which("mariadbd") is not None and shutil.which("mariadb-install-db") is not None,
        "mariadbd not installed (apt-get install mariadb-server; `make test` does it)",
    )
    with _running(MariaDB(tmp_path_factory.mktemp("mariadb"))) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto's S3 server; `.endpoint`, `.client()` (a minio client), `.down()`."""
    _need((VENV_BIN / "moto_server").exists(), "moto_server missing (pip install 'moto[server]')")
    with _running(MotoS3(tmp_path_factory.mktemp("s3"))) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """A standalone Milvus server (gRPC at `.uri`); `.down()` stops it for a fault test."""
    try:
        import milvus  # noqa: F401
    except ImportError:
        _need(False, "the `milvus` package is missing (pip install milvus==2.3.5)")
    with _running(MilvusServer(tmp_path_factory.mktemp("milvus"))) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="session")
def production_overrides(
    mariadb: MariaDB, s3_server: MotoS3, milvus_server: MilvusServer
) -> dict[str, Any]:
    """Settings overrides (dotted keys) that point an app at the three servers."""
    return {
        "stores.metadata_uri": mariadb.uri(METADATA_DB),
        "stores.objects_uri": f"s3://{S3_BUCKET}",
        "stores.s3_endpoint": s3_server.endpoint,
        "stores.s3_access_key": s3_server.access_key,
        "stores.s3_secret_key": s3_server.secret_key,
        "stores.s3_secure": False,
        "stores.s3_region": "us-east-1",
        "stores.vectors_uri": milvus_server.uri,
        "stores.collection": "image_vectors_servers",
        "stores.index_type": "HNSW",
        "stores.consistency_level": "Strong",
        "stores.connect_timeout_s": 3.0,
    }
