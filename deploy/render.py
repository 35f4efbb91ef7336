"""Render the KubeRay manifests from their templates, serve_config.yaml and docker-compose.yaml.

    python -m deploy.render            # rewrite deploy/rayservice.yaml and rayjob-backfill.yaml
    python -m deploy.render --check    # exit 1 if a committed manifest is not what this renders
    python -m deploy.render --image registry.example.com/image-search-engine:1.2 --out build/k8s

One source of truth per fact: Serve's deployments, autoscaling and batching come from
serve_config.yaml (plus the few Kubernetes changes in K8S_SERVE_OVERRIDES, each with its
reason), the image from docker-compose.yaml's app service, the environment from
deploy/templates/env.yaml. A template names what it takes as `{{ name }}`: alone on a line
for a block (indented like the placeholder), inside a line for a scalar.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("deploy.render")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
TEMPLATES = DEPLOY / "templates"
SERVE_CONFIG = ROOT / "serve_config.yaml"
COMPOSE = ROOT / "docker-compose.yaml"
ENV_TEMPLATE = TEMPLATES / "env.yaml"
# template -> manifest written next to deploy/render.py
MANIFESTS = {"rayservice.yaml": "rayservice.yaml", "rayjob-backfill.yaml": "rayjob-backfill.yaml"}

# The Ray the image installs (pyproject.toml: ray[serve,default,data], unpinned). KubeRay reads
# rayVersion for version-dependent behaviour (probe kinds, job submission, auth checks).
RAY_VERSION = "2.60.0"
# The Ray custom resource each embedder pod offers and each Embedder replica asks for.
EMBEDDER_RESOURCE = "ise_embedder"

_PLACEHOLDER = re.compile(r"\{\{ *([a-z_]+) *\}\}")


@dataclass(frozen=True)
class Override:
    """One place where the Kubernetes Serve config differs from serve_config.yaml, and why.

    `path` steps through mappings by key and through lists of named entries (applications,
    deployments) by their `name`.
    """

    path: tuple[str, ...]
    value: Any
    reason: str


K8S_SERVE_OVERRIDES: tuple[Override, ...] = (
    Override(
        ("http_options", "host"),
        "0.0.0.0",
        "the proxy must listen on the pod's address for the Service to reach it (the container "
        "image does the same with `serve start --http-host=0.0.0.0`)",
    ),
    Override(
        ("proxy_location",),
        "EveryNode",
        "KubeRay puts every ready worker pod behind image-search-serve-svc, so each one needs "
        "a proxy; a HeadOnly cluster would send part of the traffic to pods with no listener",
    ),
    Override(
        (
            "applications",
            "image_search",
            "deployments",
            "Embedder",
            "ray_actor_options",
            "resources",
        ),
        {EMBEDDER_RESOURCE: 1},
        "Embedder replicas run on the embedder worker group, one per pod, so the autoscaler "
        "adds a pod for each replica Serve autoscaling asks for",
    ),
)


class RenderError(Exception):
    """A template, serve_config.yaml or docker-compose.yaml that cannot be rendered."""


def _step(node: Any, key: str, path: Sequence[str]) -> Any:
    if isinstance(node, Mapping):
        if key not in node:
            raise RenderError(f"serve config has no {'.'.join(path)}")
        return node[key]
    if isinstance(node, list):
        for entry in node:
            if isinstance(entry, Mapping) and entry.get("name") == key:
                return entry
        raise RenderError(f"serve config has no entry named {key!r} at {'.'.join(path)}")
    raise RenderError(f"serve config: {'.'.join(path)} is neither a mapping nor a list")


def apply_override(config: dict[str, Any], override: Override) -> None:
    """Set override.value at override.path; every step but the last must already exist."""
    *parents, leaf = override.path
    node: Any = config
    for i, key in enumerate(parents):
        node = _step(node, key, override.path[: i + 1])
    if not isinstance(node, dict):
        raise RenderError(f"serve config: cannot set {'.'.join(override.path)}")
    node[leaf] = copy.deepcopy(override.value)


def k8s_serve_config(serve_config: Mapping[str, Any]) -> dict[str, Any]:
    """serve_config.yaml as the RayService runs it: the same, plus K8S_SERVE_OVERRIDES."""
    out = copy.deepcopy(dict(serve_config))
    for override in K8S_SERVE_OVERRIDES:
        apply_override(out, override)
    return out


def compose_image(compose_path: Path = COMPOSE) -> str:
    """The image docker-compose.yaml builds and runs for the service."""
    compose = yaml.safe_load(compose_path.read_text(encoding="utf-8"))
    try:
        image = compose["services"]["app"]["image"]
    except (KeyError, TypeError) as exc:
        raise RenderError(f"{compose_path}: no services.app.image") from exc
    if not isinstance(image, str) or not image:
        raise RenderError(f"{compose_path}: services.app.image is not a name")
    return image


def serve_config_block(serve_config: Mapping[str, Any]) -> str:
    header = (
        "# Generated from serve_config.yaml by deploy/render.py (K8S_SERVE_OVERRIDES applied);\n"
        "# edit serve_config.yaml, then re-render.\n"
    )
    body = yaml.dump(
        k8s_serve_config(serve_config), Dumper=_NoAliases, sort_keys=False,
        default_flow_style=False, width=100,
    )  # fmt: skip
    return header + body


class _NoAliases(yaml.SafeDumper):
    """Every value written out where it is used: serve_config.yaml shares one env_vars mapping
    between its deployments (a YAML anchor), which would otherwise come out as &id001."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def env_block(path: Path = ENV_TEMPLATE) -> str:
    """deploy/templates/env.yaml without its header comment (said once there, not per copy)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    first = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return "\n".join(lines[first:]) + "\n"


def substitute(template: str, blocks: Mapping[str, str], scalars: Mapping[str, str]) -> str:
    """Fill `{{ name }}`: a block placeholder alone on its line, scalars anywhere."""
    out: list[str] = []
    for lineno, line in enumerate(template.splitlines(), start=1):
        stripped = line.strip()
        whole = _PLACEHOLDER.fullmatch(stripped)
        if whole and whole.group(1) in blocks:
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + b if b else "" for b in blocks[whole.group(1)].splitlines())
            continue

        def scalar(m: re.Match[str], lineno: int = lineno) -> str:
            name = m.group(1)
            if name not in scalars:
                raise RenderError(f"line {lineno}: unknown or misplaced placeholder {m.group(0)}")
            return scalars[name]

        out.append(_PLACEHOLDER.sub(scalar, line))
    return "\n".join(out) + "\n"


def render(template_name: str, image: str | None = None) -> str:
    """The manifest for deploy/templates/<template_name>, as text."""
    template = (TEMPLATES / template_name).read_text(encoding="utf-8")
    serve_config = yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8"))
    blocks = {
        "serve_config": serve_config_block(serve_config),
        "env": env_block(),
    }
    scalars = {"image": image or compose_image(), "ray_version": RAY_VERSION}
    header = (
        "# GENERATED by `python -m deploy.render`: do not edit. Edit its sources, then re-render:\n"
        f"# deploy/templates/{template_name}, deploy/templates/env.yaml, serve_config.yaml and\n"
        "# docker-compose.yaml (the image).\n"
    )
    text = header + substitute(template, blocks, scalars)
    yaml.safe_load(text)  # a template that renders to invalid YAML fails here, not in kubectl
    return text


def render_all(image: str | None = None) -> dict[str, str]:
    """Manifest file name -> rendered text, for every template."""
    return {out: render(template, image) for template, out in MANIFESTS.items()}


def stale(rendered: Mapping[str, str], directory: Path = DEPLOY) -> list[str]:
    """Unified diffs of the manifests in `directory` that differ from `rendered`."""
    diffs = []
    for name, text in rendered.items():
        path = directory / name
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=f"{path} (committed)", tofile=f"{path} (rendered)",
            )  # fmt: skip
            diffs.append("".join(diff))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="fail if a manifest is stale")
    parser.add_argument("--image", help="image reference (default: docker-compose.yaml's)")
    parser.add_argument("--out", type=Path, default=DEPLOY, help="directory to write into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rendered = render_all(args.image)
    if args.check:
        diffs = stale(rendered, args.out)
        for diff in diffs:
            logger.error("%s", diff)
        if diffs:
            logger.error("stale manifests: run `python -m deploy.render`")
            return 1
        logger.info("manifests up to date: %s", ", ".join(sorted(rendered)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out / name).write_text(text, encoding="utf-8")
        logger.info("wrote %s", args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
