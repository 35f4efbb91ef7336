"""`image-search serve`: serve_config.yaml on a local Ray pinned to 127.0.0.1, stopped cleanly."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from deployments.cluster import init_local_ray

logger = logging.getLogger("image_search")


def cmd_serve(args: argparse.Namespace) -> int:
    """`serve run serve_config.yaml`, with Ray pinned to 127.0.0.1 and host/port from settings."""
    import tempfile

    import yaml
    from ray.serve.scripts import run as serve_run

    from image_search.config import load_settings

    settings = load_settings(args.config)
    if args.config:
        # Replicas build their settings from ISE_CONFIG; they inherit this environment.
        os.environ["ISE_CONFIG"] = str(Path(args.config).resolve())
    doc = yaml.safe_load(Path(args.serve_config).read_text(encoding="utf-8"))
    doc.setdefault("http_options", {}).update(host=settings.server.host, port=settings.server.port)
    # SIGTERM (service managers, tests) must unwind like Ctrl-C so Ray and Milvus Lite stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    init_local_ray(args.address, args.metrics_port, namespace="serve")
    logger.info("API: http://%s:%d/docs  dashboard: http://127.0.0.1:8265  "
                "Prometheus: http://127.0.0.1:%d/metrics", settings.server.host,
                settings.server.port, args.metrics_port)  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="serve-") as effective:
        yaml.safe_dump(doc, effective)
        effective.flush()
        try:
            serve_run.main(args=[effective.name], standalone_mode=False)
        except KeyboardInterrupt:
            pass
        finally:
            _stop_embedded_vectors(settings.stores.vectors_uri)
    return 0


def _stop_embedded_vectors(vectors_uri: str) -> None:
    if "://" not in vectors_uri:
        from image_search.stores.lite_server import stop_lite_server

        stop_lite_server(vectors_uri)
