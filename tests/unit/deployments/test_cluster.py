"""Which cluster `init_local_ray` asks Ray for, and the bind probe `image-search serve` uses.

Ray itself never starts here: a stand-in `ray` module records the ray.init call, and Ray's
own address resolution is asked directly (a pure function of its temp dir).
"""

from __future__ import annotations

import os
import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployments import cluster
from deployments.cluster import (
    DASHBOARD_PORT,
    START_LOCAL,
    direct_ingress_env,
    free_port,
    init_local_ray,
    port_unavailable,
    use_direct_ingress,
)


@pytest.fixture
def ray_init(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Replace `ray` for init_local_ray's `import ray`; yields the kwargs of each ray.init."""
    calls: list[dict[str, Any]] = []
    fake = types.ModuleType("ray")
    fake.is_initialized = lambda: False  # type: ignore[attr-defined]
    fake.init = lambda **kwargs: calls.append(kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", fake)
    # init_local_ray puts the venv's bin first on PATH; monkeypatch restores it afterwards.
    monkeypatch.setenv("PATH", "/usr/bin")
    yield calls


def test_without_address_starts_a_new_local_cluster(ray_init: list[dict[str, Any]]) -> None:
    init_local_ray(metrics_port=9999, dashboard_port=18265, namespace="serve")
    (call,) = ray_init
    # "local", not None: None would join whatever <ray tmp>/ray_current_cluster names.
    assert call["address"] == START_LOCAL == "local"
    assert call["_node_ip_address"] == "127.0.0.1" and call["dashboard_host"] == "127.0.0.1"
    assert call["dashboard_port"] == 18265 and call["_metrics_export_port"] == 9999
    assert call["namespace"] == "serve" and call["num_cpus"] >= 4


def test_without_dashboard_port_ray_chooses(ray_init: list[dict[str, Any]]) -> None:
    # Jobs and benchmarks started next to a running service must not fail on 8265.
    init_local_ray()
    (call,) = ray_init
    assert "dashboard_port" not in call and "_metrics_export_port" not in call
    assert call["address"] == "local"


def test_with_address_joins_it_and_nothing_else(ray_init: list[dict[str, Any]]) -> None:
    init_local_ray("127.0.0.1:6379", metrics_port=9999, dashboard_port=18265, namespace="serve")
    # Joining takes no resources or ports: Ray refuses num_cpus when connecting.
    assert ray_init == [{"address": "127.0.0.1:6379", "namespace": "serve"}]


def test_ray_joins_a_stale_cluster_file_unless_told_local(tmp_path: Path) -> None:
    """Pins the Ray behaviour behind defect 8, on a private temp dir (never the real /tmp/ray)."""
    from ray._private.services import canonicalize_bootstrap_address

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # closed once the block ends
    (tmp_path / "ray_current_cluster").write_text(dead)
    assert canonicalize_bootstrap_address(None, str(tmp_path)) == dead  # the old way: join it
    assert canonicalize_bootstrap_address(START_LOCAL, str(tmp_path)) is None  # start new


def test_port_unavailable_sees_a_listener_and_only_that() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        reason = port_unavailable("127.0.0.1", port)
        assert reason is not None and "in use" in reason
    assert port_unavailable("127.0.0.1", port) is None  # closed: free again


def test_port_unavailable_reports_an_address_not_on_this_machine() -> None:
    # 192.0.2.0/24 is reserved for documentation: never a local address.
    assert port_unavailable("192.0.2.1", DASHBOARD_PORT) is not None


def test_direct_ingress_gives_the_ingress_exactly_the_api_port() -> None:
    env = direct_ingress_env(8000)
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    # Ray's range is [MIN, MAX): the API port and nothing else.
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"],
            env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("8000", "8001")  # fmt: skip
    # A restarted Ingress takes the port back at once; a stop does not wait for a balancer.
    assert env["RAY_SERVE_PORT_QUARANTINE_S"] == "0"
    assert float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) <= 1


def test_ray_reads_the_direct_ingress_variables() -> None:
    """The names are Ray's: a renamed variable would silently leave the proxy in the path."""
    from ray.serve._private import constants

    source = Path(constants.__file__).read_text(encoding="utf-8")
    for key in direct_ingress_env(8000):
        assert f'"{key}"' in source, key


def test_the_environment_wins_over_direct_ingress(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in direct_ingress_env(0):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    assert use_direct_ingress(8123) is True
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "8123"
    monkeypatch.setenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", "0")
    assert use_direct_ingress(8123) is False


def test_free_port_is_free() -> None:
    port = free_port("127.0.0.1")
    assert port_unavailable("127.0.0.1", port) is None


def test_free_port_is_outside_the_ephemeral_range_and_never_the_same_twice() -> None:
    """An ephemeral port can be taken by any connection between the pick and the bind."""
    ephemeral = cluster._ephemeral_ports()
    ports = [free_port("127.0.0.1") for _ in range(50)]
    assert len(set(ports)) == 50
    assert not any(port in ephemeral for port in ports)
    assert all(port in cluster._PICK_FROM for port in ports)


def test_free_port_skips_a_taken_port_and_falls_back_to_the_os(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        # Only the taken port to pick from (it is ephemeral here, so pretend nothing is):
        monkeypatch.setattr(cluster, "_PICK_FROM", range(taken, taken + 1))
        monkeypatch.setattr(cluster, "_ephemeral_ports", lambda: range(0))
        port = free_port("127.0.0.1")
    assert port != taken and port_unavailable("127.0.0.1", port) is None
    # A machine whose ephemeral range covers every candidate: the OS's choice.
    monkeypatch.setattr(cluster, "_PICK_FROM", range(20000, 20010))
    monkeypatch.setattr(cluster, "_ephemeral_ports", lambda: range(1024, 65536))
    assert port_unavailable("127.0.0.1", free_port("127.0.0.1")) is None
