"""A real two-node Ray cluster on this machine: `ray start --head`, then `ray start --address`.

Both nodes run on 127.0.0.1, each with its own temp dir and ports, so they coexist with the
session's single-node cluster (tests/conftest.py) and with a developer's service. The test
process never joins this cluster (it may already be joined to the session's: one Ray per
process); everything goes through the CLIs and the dashboard's HTTP APIs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, VENV_BIN, free_port, stop_cluster, wait_http

logger = logging.getLogger(__name__)

# The custom resource the worker node advertises; nothing else has it.
WORKER_RESOURCE = "worker_node"
# Object stores are sized for a test, not for 30% of the machine's memory each.
OBJECT_STORE_BYTES = 200 * 1024 * 1024
START_TIMEOUT_S = 120.0
RAY_START_WORKER = "tests.multinode.ray_start"


@dataclass
class Node:
    """One `ray start` of ours: its temp dir and the node manager port its raylet listens on."""

    name: str
    temp_dir: Path
    node_manager_port: int
    head: bool

    def raylet_pid(self) -> int | None:
        """The pid of this node's raylet, found among this machine's processes by its port."""
        port_flag = f"--node_manager_port={self.node_manager_port}"
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                argv = cmdline.read_bytes().decode(errors="replace").split("\0")
                if argv and argv[0].endswith("/raylet") and port_flag in argv:
                    return int(cmdline.parent.name)
        return None


@dataclass
class LocalCluster:
    """A head and workers started with `ray start`, all stopped by `stop()`."""

    base: Path  # short: Ray's unix socket paths live under the temp dirs (108 bytes at most)
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """The environment of our Ray CLIs: the test's, minus any pointer to another cluster."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_NAMESPACE")}
        # Jobs run `python` from the nodes' PATH: the venv's, as for `image-search serve`.
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _start(self, name: str, num_cpus: int, extra: list[str], head: bool,
               resources: dict[str, float] | None = None) -> Node:  # fmt: skip
        temp = self.base / name
        node = Node(name, temp, free_port(), head)
        # A worker node needs `ray start` with the laptop guard lifted: see ray_start.py.
        launcher = [str(VENV_BIN / "ray")] if head else [sys.executable, "-m", RAY_START_WORKER]
        cmd = [
            *launcher, "start", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
            f"--num-cpus={num_cpus}", f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--node-manager-port={node.node_manager_port}",
            f"--object-manager-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            # 0/0: the OS picks each worker's port, so two nodes (and the session's cluster) on
            # one machine never hand out the same one.
            "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats",
            f"--resources={json.dumps(resources or {})}", *extra,
        ]  # fmt: skip
        # Recorded before starting: a start that fails halfway is stopped like the others.
        self.nodes.append(node)
        started = time.monotonic()
        res = subprocess.run(cmd, env=self.env(), cwd=ROOT, capture_output=True, text=True,
                             timeout=START_TIMEOUT_S)  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed:\n{(res.stdout + res.stderr)[-3000:]}")
        logger.info("node %s started in %.1fs", name, time.monotonic() - started)
        return node

    def start_head(self, num_cpus: int) -> Node:
        extra = [
            "--head", f"--port={self.port}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
        ]  # fmt: skip
        node = self._start("head", num_cpus, extra, head=True)
        wait_http(self.dashboard + "/api/version", timeout=60)
        return node

    def add_worker(self, name: str, num_cpus: int, resources: dict[str, float]) -> Node:
        return self._start(name, num_cpus, [f"--address={self.address}"], head=False,
                           resources=resources)  # fmt: skip

    def kill_raylet(self, node: Node) -> int:
        """SIGKILL the node's raylet, as a machine that vanishes; returns its pid."""
        pid = node.raylet_pid()
        assert pid is not None, f"no raylet found for node {node.name}"
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        """Stop every process of this cluster (found by temp dir and GCS address), then files."""
        markers = [str(n.temp_dir) for n in self.nodes]
        markers += [f"--address={self.address}", f"--gcs-address={self.address}",
                    f"--gcs_address={self.address}"]  # fmt: skip
        stop_cluster(*markers, timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)


def state(cluster: LocalCluster, kind: str, **kwargs: Any) -> list[dict[str, Any]]:
    """ray.util.state over the dashboard's HTTP API: never joins the cluster."""
    from ray.util import state as ray_state

    lister = getattr(ray_state, f"list_{kind}")
    rows = lister(address=cluster.dashboard, limit=10_000, raise_on_missing_output=False,
                  timeout=60, **kwargs)  # fmt: skip
    return [r if isinstance(r, dict) else r.__dict__ for r in rows]
