"""The Ray cluster the app and the jobs run on: join one, or start a local one on 127.0.0.1."""

from __future__ import annotations

import os
import random
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from image_search.errors import ConfigError
from image_search.stores import is_vectors_server

if TYPE_CHECKING:
    from image_search.config import Settings

# How Serve moves a request between its processes, read by every Ray process when it starts
# (so it must be in the environment of each node's raylet: `image-search serve` sets it for a
# local cluster, the Dockerfile, the KubeRay manifests and docs/multinode.md for the others).
# The calls go over Serve's gRPC transport, by value, instead of as Ray actor tasks with their
# object-store and ownership bookkeeping: the transport of Ray's documented high-throughput
# mode (RAY_SERVE_THROUGHPUT_OPTIMIZED), taken alone. The price: a pending result passed into
# the next call is fetched by the caller and sent on, so an upload's pixels (150 kB) go from the
# Decoder to the Embedder through the Ingress. Measured with bench.compare on 2 cores (README,
# "How it works", the transport table): faster at every load all the same, and keeping that
# one hop on the object store (by-reference calls for it) gave most of the gain back. gRPC
# caps a message at 4 MiB unless told otherwise, which would fail every photo bigger than
# that; the cap is raised to gRPC's own ceiling, as Ray's actor calls have none: the body
# limits (deployments.admission) bound what a request can carry.
# Two more of that mode's switches are for the replicas alone, so they are set on them
# (REPLICA_LOOP_ENV) and not here: every process reads these.
SERVE_TRANSPORT_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
}

# In each replica (serve_config.yaml gives every deployment these env_vars; a unit test keeps
# them equal): our code runs on the replica's own event loop, and a handle call is routed on
# the caller's loop, instead of each on a loop in a thread of its own with a hand-over between
# threads at every call and answer (an upload makes three). Our slow steps run in threads
# anyway (the decode, the model, the stores); what stays on the loop is short: hashing an
# upload, 2.5 ms a megabyte (50 ms for the largest one allowed). Measured with bench.compare,
# alternated with Ray's defaults (README, "How it works"). Not in every process: there the
# second one makes a handle used outside an event loop (a script's `.result()`) raise.
REPLICA_LOOP_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}

# A local single-node Ray must stay on loopback: Ray otherwise swaps 127.0.0.1 for the address
# it finds by probing a public DNS server. With "cluster" mode off (the flag Ray uses on laptops)
# it binds the node to 127.0.0.1. These are read when ray is imported, so set them first.
# Serve's HTTP proxy installs the middlewares this function returns: body limits enforced
# while the proxy reads, which it otherwise does to the end (see deployments.admission).
LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.admission.proxy_middlewares",
    **SERVE_TRANSPORT_ENV,
}


def direct_ingress_env(api_port: int) -> dict[str, str]:
    """Serve's direct ingress (Ray 2.60) for a local cluster: the Ingress replica answers HTTP
    on the API port itself, so a request no longer passes through Serve's HTTP proxy, a
    process that otherwise reads it, forwards it over gRPC and lets the Ingress fetch its body
    back with actor calls. `python -m bench.ingress` measures both doors of one service
    (README, "How it works", has the figures). The proxy still runs (Serve starts it), on a
    free port that nobody is sent to.

    Ray hands an ingress replica the first free port of [MIN, MAX): here the API port alone.
    Its other defaults are for replicas behind a load balancer, which a local service has
    not: a released port is held back for 150 s before another replica may take it (a
    restarted Ingress would find the API port refused that long), and a stopping replica
    keeps answering 30 s for the balancer to drain it (every stop would take that long).
    """
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(api_port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(api_port + 1),
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }


def use_direct_ingress(api_port: int) -> bool:
    """Set direct_ingress_env for the local cluster about to start (what the environment
    already says wins: RAY_SERVE_ENABLE_DIRECT_INGRESS=0 keeps the proxy on the API port).
    Returns whether the API port is the Ingress replica's own."""
    for key, value in direct_ingress_env(api_port).items():
        os.environ.setdefault(key, value)
    return os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"


# Where free_port looks: above Ray's worker ports (10002-19999 by default) and below Serve's
# direct-ingress HTTP ports (30000-31000) and Linux's ephemeral range (32768-60999 by default).
_PICK_FROM = range(20000, 30000)
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def _ephemeral_ports() -> range:
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(low, high + 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, for a server to listen on moments later.

    Not the OS's choice (bind to port 0): that is an ephemeral port, which the kernel gives
    again to the next outgoing connection or bind(0) anywhere on the machine once the probe
    closes, and a starting Ray cluster opens dozens; the server then failed to bind ("Failed to
    bind to address", a fresh-clone CI run on 2026-12-06). A port outside the ephemeral range
    is only ever taken by an explicit bind. Each is handed out once per process, so two calls
    in a row never get the same port. The OS's choice remains where the range is all ephemeral.
    """
    ephemeral = _ephemeral_ports()
    candidates = [p for p in _PICK_FROM if p not in ephemeral and p not in _handed_out]
    random.shuffle(candidates)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in [*candidates[:64], 0]:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            chosen = int(probe.getsockname()[1])
        _handed_out.add(chosen)
        return chosen
    raise OSError(f"no free port on {host}")


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


def embedded_stores(settings: Settings) -> list[str]:
    """The stores that live on one machine's disk: "setting=value (kind)", one per store."""
    st = settings.stores
    found = []
    if st.metadata_uri.split(":", 1)[0].split("+", 1)[0] == "sqlite":
        found.append(f"stores.metadata_uri={st.metadata_uri} (SQLite)")
    if st.objects_uri.startswith("file://"):
        found.append(f"stores.objects_uri={st.objects_uri} (a local folder)")
    if not is_vectors_server(st.vectors_uri):
        found.append(f"stores.vectors_uri={st.vectors_uri} (Milvus Lite)")
    return found


def alive_nodes() -> int | None:
    """Alive nodes of the cluster this process is connected to; None when not connected."""
    import ray

    if not ray.is_initialized():
        return None
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return sum(1 for node in nodes if node.get("Alive"))


def refuse_embedded_stores_on_multinode(
    settings: Settings, count_nodes: Callable[[], int | None] = alive_nodes
) -> None:
    """Raise ConfigError when embedded stores would be used by a cluster of several nodes.

    Each node would open its own SQLite file, folder and Milvus Lite server: an image uploaded
    through a replica on one node would be missing from searches answered on another, and a
    job's writes would land on whichever node ran each task. Checked when the app is built,
    which is on the cluster for `serve run`/`serve deploy` and in the driver for `serve.run`.
    """
    embedded = embedded_stores(settings)
    if not embedded:
        return
    nodes = count_nodes()
    if nodes is None or nodes <= 1:
        return
    raise ConfigError(
        f"refusing to start on a Ray cluster of {nodes} alive nodes with embedded stores, "
        f"which live on one machine's disk: {'; '.join(embedded)}. Configure stores that "
        "every node reaches over the network instead: stores.metadata_uri="
        "mysql+pymysql://USER:PASSWORD@HOST:3306/DB (MySQL/MariaDB), stores.objects_uri="
        "s3://BUCKET with stores.s3_endpoint (S3/MinIO), stores.vectors_uri="
        "http://HOST:19530 (a Milvus server); as ISE__STORES__METADATA_URI, "
        "ISE__STORES__OBJECTS_URI, ISE__STORES__VECTORS_URI in the environment or in "
        "config.yaml. See docs/multinode.md"
    )
