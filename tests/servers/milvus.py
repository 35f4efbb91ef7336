"""Milvus for the tests: the standalone binary of the PyPI package `milvus`, on fixed ports."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployments.cluster import free_port
from tests.servers.process import ManagedServer

# The components that listen. (Milvus 2.3 has no indexCoord: dataCoord does its work, and its
# milvus.yaml has no such section, so an ip set there was dropped; check_written says so now.)
_MILVUS_SECTIONS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord",
                    "dataNode")  # fmt: skip


def check_written(path: Path, settings: Mapping[str, object]) -> None:
    """Each setting as milvus.yaml holds it: the package's writer replaces only keys its
    template has, so a misspelt or retired one would be dropped without a word."""
    written = yaml.safe_load(path.read_text())
    for key, value in settings.items():
        node: Any = written
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:
            raise RuntimeError(f"Milvus setting {key}: milvus.yaml holds {node!r}, not {value!r}")


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

    def __init__(self, workdir: Path, gomaxprocs: int = 0) -> None:
        """gomaxprocs > 0: Go's GOMAXPROCS for the server (0: Go's own, one per core). Milvus
        sizes its thread pools from it too (hardware.GetCPUNum), its index build's among them."""
        super().__init__(workdir)
        self.gomaxprocs = gomaxprocs
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
        # Not much lower: a component whose lease lapses exits, and on a loaded 2-core
        # machine a keep-alive can be late by seconds (5 s killed the server in one CI run).
        self.config.set("common.session.ttl", 15)
        self._prepared = False
        self.bin = Path()

    @property
    def port(self) -> int:
        return int(self.ports["proxy_port"])

    @property
    def config_path(self) -> Path:
        """The milvus.yaml the server reads, written at its first start."""
        return Path(self.config.base_data_dir) / "configs" / "milvus.yaml"

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
            # A test server on a shared disk: one fdatasync stalled 17 s in a CI run while
            # other servers wrote, every session lease lapsed and Milvus exited. Without
            # fsync a killed process still keeps its writes (page cache); only a machine
            # crash would lose them, which no test survives anyway.
            "unsafe-no-fsync: true\n"
        )
        # Without a config file the embedded etcd listens on the fixed 2379/2380, which would
        # collide with any other Milvus on this machine.
        conf = self.config_path
        check_written(conf, cfg.extra_configs)
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
        if self.gomaxprocs:
            env["GOMAXPROCS"] = str(self.gomaxprocs)
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
