"""The Ray cluster the app and the jobs run on: join one, or start a local one on 127.0.0.1."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# A local single-node Ray must stay on loopback: Ray otherwise swaps 127.0.0.1 for the address
# it finds by probing a public DNS server. With "cluster" mode off (the flag Ray uses on laptops)
# it binds the node to 127.0.0.1. These are read when ray is imported, so set them first.
LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def pin_ray_to_loopback() -> None:
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)


def init_local_ray(
    address: str | None = None, metrics_port: int | None = None, **kwargs: Any
) -> None:
    """Connect to `address`, or start a local Ray pinned to 127.0.0.1 with its dashboard."""
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
        # Logical CPUs are a scheduling quota: with only the physical count, the service's
        # fractional replicas leave a backfill job's actors pending forever on a 2-core laptop.
        "num_cpus": max(4, 2 * (os.cpu_count() or 2)),
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
    }
    if metrics_port:
        local["_metrics_export_port"] = metrics_port
    ray.init(**local, **kwargs)
