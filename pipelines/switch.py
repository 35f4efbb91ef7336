"""Switch a running Serve application to another model and collection without failing a search.

Why not one plain redeploy: a search crosses two deployments, Embedder then Indexer, and the
Indexer refuses a vector from another model than its collection's (503, "model switch in
progress"). Serve rolls each deployment on its own, so a new Embedder must never feed an old
Indexer, nor an old Embedder a new one. Under the same app name and route prefix:

  1. refresh: redeploy the current settings, every deployment with max_surge_percent=100 (a
     replacement starts and passes its health check before an old replica stops). Same
     model, so no request notices; the point is replicas whose graceful shutdown outlasts
     step 2, because old Ingress replicas hold the searches that wait during it.
  2. move: redeploy with the new settings. Decoder, Indexer and Ingress surge as in step 1;
     the Embedder alone is replaced stop-first (Serve's default): the old one takes no new
     request and finishes the few it holds, which reach an old Indexer (still serving). New
     searches wait in the Embedder's queue until the new Embedder is up, and by then the new
     Indexer has long replaced the old: it needs no model, so it starts in about a second
     against the Embedder's several (torch import, weights, warm-up).

Every search is answered, and by one model end to end; those arriving during step 2 wait
about one Embedder start-up. What is left is an ordering bet, not a guarantee: were the new
Embedder up before the new Indexer, searches would get the 503 above until it is. A switch
with no bet needs an Indexer that serves both collections while it runs (see docs/pipelines.md).
Serve gives `serve.run` deployments a fresh version each time, so step 1 restarts everything.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from image_search.config import Settings
from image_search.errors import ConfigError

logger = logging.getLogger(__name__)

EMBEDDER = "Embedder"
SURGE = 100  # percent: each replacement starts and passes health checks before an old stops
DRAIN_S = 180.0  # graceful shutdown of old replicas: must outlast a whole switch
# The live deployment_config keys that Deployment.options() takes back unchanged.
_CARRIED = (
    "max_ongoing_requests", "max_queued_requests", "user_config", "ray_actor_options",
    "graceful_shutdown_wait_loop_s", "health_check_period_s", "health_check_timeout_s",
)  # fmt: skip


def settings_overrides(settings: Settings) -> dict[str, Any]:
    """Every leaf of `settings` as a dotted override: build_app then yields exactly `settings`,
    whatever config.yaml or ISE__ variables the deploying process happens to see."""
    out: dict[str, Any] = {}
    for key, value in settings.model_dump(mode="json").items():
        if isinstance(value, dict) and key in ("model", "limits", "stores", "server"):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def app_details(app_name: str) -> dict[str, Any] | None:
    """The Serve controller's view of one application (route prefix, deployments, options)."""
    # A private API, for want of a public one: serve.status() has neither the route prefix nor
    # the live deployment options, which the redeploys must keep. The same details back
    # `serve status -v` and the dashboard's REST API, which a job could reach only with the
    # dashboard's address and, on a token-auth cluster, its token.
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise ConfigError("Ray Serve is not running on this cluster")
    details: dict[str, Any] = client.get_serve_details()
    app: dict[str, Any] | None = details.get("applications", {}).get(app_name)
    return app


def live_options(
    app: dict[str, Any], fallback: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per-deployment options as they run now, so the redeploys change nothing else."""
    out: dict[str, dict[str, Any]] = {}
    for name, dep in app.get("deployments", {}).items():
        cfg = dep.get("deployment_config") or {}
        opts = {k: cfg[k] for k in _CARRIED if cfg.get(k) is not None}
        if cfg.get("autoscaling_config"):
            opts["autoscaling_config"] = {
                k: v for k, v in cfg["autoscaling_config"].items() if v is not None
            }
        elif cfg.get("num_replicas") is not None:
            opts["num_replicas"] = cfg["num_replicas"]
        out[name] = opts or dict(fallback.get(name, {}))
    return out


def _staged(
    base: dict[str, dict[str, Any]], embedder_first_stop: bool
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, opts in base.items():
        o = {**opts, "graceful_shutdown_timeout_s": DRAIN_S}
        o["max_surge_percent"] = 0 if (name == EMBEDDER and embedder_first_stop) else SURGE
        out[name] = o
    return out


def _old_replicas_left(app_name: str, deployments: tuple[str, ...] | None = None) -> int:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return 0
    return sum(
        n
        for name, dep in app.deployments.items()
        if deployments is None or name in deployments
        for state, n in dep.replica_states.items()
        if state != "RUNNING"  # a str enum
    )


def _settle(
    app_name: str, settings: Settings, timeout_s: float, deployments: tuple[str, ...] | None
) -> None:
    """Wait until the retired replicas are gone, then make sure the vector server survived."""
    deadline = time.monotonic() + timeout_s
    while _old_replicas_left(app_name, deployments) and time.monotonic() < deadline:
        time.sleep(0.25)
    _revive_embedded_vectors(settings)


def _revive_embedded_vectors(settings: Settings) -> None:
    """Make sure the embedded Milvus Lite server runs once the old replicas are gone.

    The server is detached from the process that started it (lite_server), so retiring the
    replica that started it does not stop it; this restarts it only if it died anyway, and the
    new replicas reconnect on their next call.
    """
    if "://" in settings.stores.vectors_uri:
        return
    from image_search.stores import vectors_endpoint

    vectors_endpoint(settings)


def switch_app(
    app_name: str,
    old: Settings,
    new: Settings,
    route_prefix: str | None = None,
    serve_config: str | None = None,
    drain_timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Move `app_name` from `old` to `new` settings (steps in the module docstring)."""
    from ray import serve

    from deployments.app import build_app, serve_config_options

    app = app_details(app_name)
    if app is None or app.get("status") in ("NOT_STARTED", "DELETING"):
        raise ConfigError(f"no running Serve application named {app_name!r} to switch")
    if EMBEDDER not in app.get("deployments", {}):
        raise ConfigError(f"application {app_name!r} has no {EMBEDDER} deployment")
    prefix = route_prefix or app.get("route_prefix") or "/"
    fallback = {}
    if serve_config and Path(serve_config).exists():
        fallback = serve_config_options(serve_config)
    base = live_options(app, fallback)
    timings: dict[str, float] = {}
    started = time.monotonic()

    def deploy(step: str, settings: Settings) -> None:
        options = _staged(base, embedder_first_stop=step == "move")
        graph = build_app(
            {"overrides": settings_overrides(settings), "deployment_options": options}
        )
        serve.run(graph, name=app_name, route_prefix=prefix)  # returns once the app is RUNNING
        timings[step] = round(time.monotonic() - started, 2)
        logger.info("switch %s: %s done at %.1fs", app_name, step, timings[step])

    deploy("refresh", old)
    _settle(app_name, old, drain_timeout_s, None)
    moving = time.monotonic()
    deploy("move", new)
    waited_s = time.monotonic() - moving
    # Old replicas drain their in-flight requests after RUNNING; the catch-up waits for them.
    _settle(app_name, new, drain_timeout_s, None)
    return {
        "app": app_name,
        "route_prefix": prefix,
        "model_id": new.model.model_id,
        "collection": new.stores.collection,
        "steps_s": timings,
        "searches_waited_up_to_s": round(waited_s, 2),
        "drained_s": round(time.monotonic() - started, 2),
    }
