"""The Ray cluster the app and the jobs run on: join one, or start a local one on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

# A local single-node Ray must stay on loopback: Ray otherwise swaps 127.0.0.1 for the address
# it finds by probing a public DNS server. With "cluster" mode off (the flag Ray uses on laptops)
# it binds the node to 127.0.0.1. These are read when ray is imported, so set them first.
# Serve's HTTP proxy installs the middlewares this function returns: body limits enforced
# while the proxy reads, which it otherwise does to the end (see deployments.admission).
LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.admission.proxy_middlewares",
}

# Ray's own default. `image-search serve` passes it explicitly: left unset, Ray silently moves
# the dashboard to 8266, 8267... when 8265 is taken, and the URL we print would be wrong.
DASHBOARD_PORT = 8265

# ray.init(address=None) joins the cluster named in <ray temp dir>/ray_current_cluster, a file
# `ray start` leaves behind even when that cluster has died; with our num_cpus the join then
# fails ("num_cpus and num_gpus must not be provided"). "local" always starts a new cluster.
START_LOCAL = "local"


def pin_ray_to_loopback() -> None:
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)


def port_unavailable(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on (e.g. "Address already in use"), or None if it can.

    A bind probe, as Ray's own dashboard check: SO_REUSEADDR so that a previous run's
    TIME_WAIT connections do not count as taken, while a live listener still does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def init_local_ray(
    address: str | None = None,
    metrics_port: int | None = None,
    dashboard_port: int | None = None,
    **kwargs: Any,
) -> None:
    """Join the cluster at `address`; without one, start a new local Ray on 127.0.0.1.

    Without `address` this never joins an existing cluster, live or dead (see START_LOCAL).
    `dashboard_port` unset lets Ray pick the next free port after 8265 (jobs, benchmarks).
    """
    pin_ray_to_loopback()
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, **kwargs)
        return
    # Jobs submitted to this cluster run `python ...` with the cluster's PATH: make that the
    # interpreter (venv) the service runs in, even when it was started as .venv/bin/image-search.
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    local: dict[str, Any] = {
        "address": START_LOCAL,
        # Logical CPUs are a scheduling quota: with only the physical count, the service's
        # fractional replicas leave a backfill job's actors pending forever on a 2-core laptop.
        "num_cpus": max(4, 2 * (os.cpu_count() or 2)),
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
    }
    if dashboard_port:
        local["dashboard_port"] = dashboard_port
    if metrics_port:
        local["_metrics_export_port"] = metrics_port
    ray.init(**local, **kwargs)
