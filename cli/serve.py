"""`image-search serve`: serve_config.yaml on a local Ray pinned to 127.0.0.1, stopped cleanly."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NamedTuple

from deployments.cluster import free_port, init_local_ray, port_unavailable, use_direct_ingress

if TYPE_CHECKING:
    from image_search.config import Settings

logger = logging.getLogger("image_search")

# Exit status when the service cannot start (a port it needs is taken).
EXIT_CANNOT_START = 2


class PortNeed(NamedTuple):
    """A port the local service will listen on, and how its user changes it."""

    what: str
    host: str
    port: int
    change: str


def cmd_serve(args: argparse.Namespace) -> int:
    """`serve run serve_config.yaml`, with Ray pinned to 127.0.0.1 and host/port from settings."""
    from image_search.config import load_settings

    settings = load_settings(args.config)
    joining = bool(args.address)
    # A joined cluster's ports are its own business. A local one: check before Ray starts
    # (seconds, then a long traceback) and before the heavy imports, so a taken port is
    # reported in well under a second with what to change.
    problems = [] if joining else port_problems(local_port_needs(settings, args))
    if problems:
        for problem in problems:
            logger.error("%s", problem)
        logger.error("image-search serve did not start; nothing is left running")
        return EXIT_CANNOT_START

    import tempfile

    import click
    import yaml
    from ray.serve.scripts import run as serve_run

    if args.config:
        # Replicas build their settings from ISE_CONFIG; they inherit this environment.
        os.environ["ISE_CONFIG"] = str(Path(args.config).resolve())
    doc = yaml.safe_load(Path(args.serve_config).read_text(encoding="utf-8"))
    host, api_port = settings.server.host, settings.server.port
    # A local cluster's Ingress replica serves the API port itself (direct ingress); Serve's
    # proxy, which Serve still starts, then takes another port. A joined cluster's own
    # settings decide (its proxy, docs/multinode.md).
    direct = not joining and use_direct_ingress(api_port)
    proxy_port = free_port(host) if direct else api_port
    doc.setdefault("http_options", {}).update(host=host, port=proxy_port)
    init_local_ray(args.address, args.metrics_port, args.dashboard_port, namespace="serve")
    # After ray.init, never before: it replaces the SIGTERM handler, and the driver's core
    # worker installs a native crash handler that answers SIGTERM with abort() -- no `finally`,
    # no atexit, the local cluster and Milvus Lite left running.
    signal.signal(signal.SIGTERM, _on_sigterm_joined if joining else _on_sigterm_local)
    if joining:
        logger.info("API: http://%s:%d/docs on the Ray cluster at %s", settings.server.host,
                    settings.server.port, args.address)  # fmt: skip
    else:
        logger.info("API: http://%s:%d/docs  dashboard: http://127.0.0.1:%d  "
                    "Prometheus: http://127.0.0.1:%d/metrics", host, api_port,
                    args.dashboard_port, args.metrics_port)  # fmt: skip
        if direct:
            logger.info("the API port is the Ingress replica's own (Serve's direct ingress); "
                        "Serve's HTTP proxy is on %s:%d", host, proxy_port)  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="serve-") as effective:
        yaml.safe_dump(doc, effective)
        effective.flush()
        try:
            serve_run.main(args=[effective.name], standalone_mode=False)
        except (KeyboardInterrupt, click.exceptions.Abort):
            # Abort: click's form of a Ctrl-C that came before `serve run` started waiting.
            pass
        finally:
            _stopping()  # a Ctrl-C came this way, with no handler of ours on the path
            if not joining:
                # Replicas first, then the Milvus Lite server they use: the other way round,
                # the Indexer spends its last seconds logging failed flushes.
                _stop_local_ray()
            _stop_embedded_vectors(settings.stores.vectors_uri)
    return 0


def local_port_needs(settings: Settings, args: argparse.Namespace) -> list[PortNeed]:
    """The ports `image-search serve` listens on when it starts its own cluster."""
    return [
        PortNeed("HTTP API", settings.server.host, settings.server.port,
                 "ISE__SERVER__PORT (server.port in config.yaml)"),
        PortNeed("Ray dashboard", "127.0.0.1", args.dashboard_port,
                 "--dashboard-port or ISE_DASHBOARD_PORT"),
        PortNeed("Prometheus metrics", "127.0.0.1", args.metrics_port,
                 "--metrics-port or ISE_METRICS_PORT"),
    ]  # fmt: skip


def port_problems(needs: list[PortNeed]) -> list[str]:
    """One message per port the service cannot listen on: which port, why, what to change."""
    problems: list[str] = []
    seen: dict[int, PortNeed] = {}
    for need in needs:
        if need.port in seen:
            other = seen[need.port]
            problems.append(
                f"port {need.port} is configured for both the {other.what} and the {need.what}: "
                f"set {need.change} to another port"
            )
            continue
        seen[need.port] = need
        reason = port_unavailable(need.host, need.port)
        if reason:
            problems.append(
                f"cannot listen on {need.host}:{need.port} for the {need.what}: {reason}. "
                f"Stop whatever uses it, or set {need.change} to a free port"
            )
    return problems


def _stopping() -> None:
    # Once stopping, further signals are ignored: `make serve` forwards its own SIGTERM to
    # this process (a second one right after the group's), and a signal landing inside the
    # clean-up would cut it short and leave Milvus Lite and the cluster running.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logger.info("stopping: the service, the local cluster and the embedded stores")


def _on_sigterm_local(signum: int, frame: FrameType | None) -> None:
    # Unwind like the end of the program: `finally` stops Milvus Lite, then Ray's atexit hook
    # stops the local cluster this process started (GCS, raylet, dashboard, replicas).
    _stopping()
    sys.exit(0)


def _on_sigterm_joined(signum: int, frame: FrameType | None) -> None:
    # On a joined cluster exiting stops nothing there: take Ctrl-C's path instead, on which
    # `serve run` shuts down the Serve applications it deployed.
    _stopping()
    raise KeyboardInterrupt


def _stop_local_ray() -> None:
    import ray

    ray.shutdown()  # stops the local cluster this process started (its atexit hook would too)


def _stop_embedded_vectors(vectors_uri: str) -> None:
    if "://" not in vectors_uri:
        from image_search.stores.lite_server import stop_lite_server

        stop_lite_server(vectors_uri)
