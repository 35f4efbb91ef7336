"""The one graph builder, for `serve run serve_config.yaml`, `image-search serve` and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray.serve import Application

from deployments.cluster import refuse_embedded_stores_on_multinode
from deployments.decoder import Decoder
from deployments.embedder import Embedder
from deployments.indexer import Indexer
from deployments.ingress import Ingress
from image_search.config import Settings, load_settings, settings_to_json


def build_app(args: dict[str, Any]) -> Application:
    """Ingress -> Decoder -> Embedder -> Indexer, each given the settings as JSON.

    args: {"config": path to config.yaml (optional), "overrides": {"dotted.key": value},
    "deployment_options": {name: options}}. The last is for `serve.run` from Python (tests),
    which has no serve_config.yaml: pass `serve_config_options()` to get the same replicas.
    """
    settings: Settings = load_settings(args.get("config"), overrides=args.get("overrides"))
    # Before any replica opens a store: embedded ones on several nodes would split the index.
    refuse_embedded_stores_on_multinode(settings)
    sj = settings_to_json(settings)
    opts: dict[str, dict[str, Any]] = args.get("deployment_options") or {}

    def opt(d: Any) -> Any:
        return d.options(**opts[d.name]) if d.name in opts else d

    graph: Application = opt(Ingress).bind(
        opt(Decoder).bind(sj), opt(Embedder).bind(sj), opt(Indexer).bind(sj), sj
    )
    return graph


def serve_config_options(path: str | Path = "serve_config.yaml") -> dict[str, dict[str, Any]]:
    """Per-deployment options from serve_config.yaml, for `serve.run` from Python."""
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {}
    for dep in doc["applications"][0].get("deployments", []):
        dep = dict(dep)
        out[dep.pop("name")] = dep
    return out
