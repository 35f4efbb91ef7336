"""serve_config.yaml, copied and adjusted for placement on a head and a worker node.

The copy keeps every deployment option of the real file (queues, batching, CPUs, allocator
settings) and changes only where replicas may run, plus what a second cluster on this machine
needs: its own HTTP port and the stores to use (the app's `args`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# Ray gives the head node this resource (amount 1) by itself: a tiny request pins an actor
# there without reserving anything real.
HEAD_RESOURCE = "node:__internal_head__"
ON_HEAD = ("Ingress", "Decoder", "Indexer")
# The heavy deployment, one replica per node: the head's keeps serving when the worker goes.
SPREAD = "Embedder"


def placed_config(
    real: Path, http_port: int, args: dict[str, Any], embedders: int = 2
) -> dict[str, Any]:
    """The real serve config with Ingress/Decoder/Indexer on the head and Embedders spread."""
    doc: dict[str, Any] = copy.deepcopy(yaml.safe_load(real.read_text(encoding="utf-8")))
    doc["http_options"]["port"] = http_port
    (app,) = doc["applications"]
    app["args"] = args
    names = set()
    for dep in app["deployments"]:
        names.add(dep["name"])
        if dep["name"] in ON_HEAD:
            options = dep.setdefault("ray_actor_options", {})
            options.setdefault("resources", {})[HEAD_RESOURCE] = 0.001
        elif dep["name"] == SPREAD:
            # A fixed count instead of autoscaling: the test needs one replica on each node.
            dep.pop("autoscaling_config", None)
            dep["num_replicas"] = embedders
            dep["max_replicas_per_node"] = 1
    missing = {*ON_HEAD, SPREAD} - names
    assert not missing, f"serve_config.yaml lost deployments {missing}: update this layout"
    return doc


def write_config(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path
