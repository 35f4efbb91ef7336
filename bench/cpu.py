"""Where a server's CPU goes during one phase of a benchmark, by process role, from /proc.

A benchmark's throughput says how fast; this says what it is bound by. Two samples of every
process a server started (its session, or a process naming its private work folder, as
bench.processes finds them to stop them) and of the benchmark itself (the load generator),
taken around a phase, give each role's CPU time per request. On a machine whose cores are
all busy, the roles' shares are the bound: decode and model against hops and stores.

What it does not show: CPU of processes that ended during the phase (a replica scaled down)
is lost, and time spent waiting (locks, I/O, a queue) is not CPU at all.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import processes
from image_search.stores.lite_server import SERVER_MODULE

LOAD_GENERATOR = "load generator"
# The first pattern found in a process's command line names its role; Serve replicas are
# named by their deployment (`ray::ServeReplica:<app>:<deployment>`).
ROLES = (
    ("ray::ProxyActor", "Serve HTTP proxy"),
    ("ray::ServeController", "Serve controller"),
    ("/raylet", "raylet"),
    ("gcs_server", "GCS"),
    (SERVER_MODULE, "Milvus Lite"),
    ("milvus_lite", "Milvus Lite"),
    ("milvus run", "Milvus server"),
    ("mariadbd", "MariaDB"),
    ("bench.reference_server", "reference server"),
    ("image-search serve", "image-search serve"),
)


def role(cmdline: str) -> str:
    if cmdline.startswith("ray::ServeReplica:"):
        return cmdline.split()[0].rsplit(":", 1)[-1]
    for pattern, name in ROLES:
        if pattern in cmdline:
            return name
    return "other Ray" if "ray" in cmdline else "other"


@dataclass(frozen=True)
class Sample:
    """CPU seconds (user + system) of each process, by pid, with its role."""

    cpu_s: dict[int, tuple[str, float]]


def _names(pid: int, cmdline: str, marker: str) -> bool:
    # Ray's workers retitle themselves (`ray::ServeReplica:...`) and may run in a session of
    # their own; their environment still names the server's folder (RAY_TMPDIR).
    if marker in cmdline:
        return True
    with contextlib.suppress(OSError):  # another user's process: not ours to read
        return marker.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    return False


def sample(session: int, marker: str) -> Sample:
    """The server's processes (session `session`, or naming `marker`, its work folder) and
    this one, the load generator."""
    out: dict[int, tuple[str, float]] = {}
    me = os.getpid()
    for pid in processes.live_pids():
        info = processes.proc_info(pid)
        if info is None:
            continue
        if pid == me:
            out[pid] = (LOAD_GENERATOR, info.cpu_s)
        elif info.session == session or _names(pid, info.cmdline, marker):
            out[pid] = (role(info.cmdline), info.cpu_s)
    return Sample(out)


def spent(before: Sample, after: Sample, wall_s: float, requests: int) -> dict[str, Any]:
    """CPU between two samples: in cores (CPU seconds per wall second), and in ms per request,
    by role, largest first. A process new since `before` counts from zero: a replica started
    by autoscaling during the phase is part of its cost. One that changed role meanwhile (Ray's
    idle worker that became a replica) is charged to its new role."""
    by_role: dict[str, float] = defaultdict(float)
    for pid, (name, cpu_s) in after.cpu_s.items():
        was = before.cpu_s.get(pid)
        by_role[name] += cpu_s - (was[1] if was else 0.0)
    total = sum(by_role.values())
    per = max(requests, 1)
    return {
        "cores": total / wall_s if wall_s > 0 else None,
        "ms_per_request": 1000 * total / per,
        "by_role_ms": {k: round(1000 * v / per, 1)
                       for k, v in sorted(by_role.items(), key=lambda kv: -kv[1]) if v > 0},
    }  # fmt: skip


def busy_cores(before: Sample, after: Sample, wall_s: float) -> float:
    """The server's and the load generator's cores between two samples (see spent)."""
    return float(spent(before, after, wall_s, 1)["cores"] or 0.0)


def describe(use: dict[str, Any], top: int = 6) -> str:
    """`150 ms/request at 1.9 cores: Decoder 42, Ingress 25, ..., the rest 12`."""
    roles = list(use["by_role_ms"].items())
    parts = [f"{name} {ms:.0f}" for name, ms in roles[:top]]
    rest = sum(ms for _, ms in roles[top:])
    if rest:
        parts.append(f"the rest {rest:.0f}")
    cores = "-" if use["cores"] is None else f"{use['cores']:.2f}"
    return f"{use['ms_per_request']:.0f} ms/request at {cores} cores: " + ", ".join(parts)
