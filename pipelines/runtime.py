"""What every pipeline entry point shares: settings from flags, Ray start-up, logging, reports."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from image_search.config import Settings, load_settings

logger = logging.getLogger("pipelines")
LIST_LIMIT = 1000  # entries per kind in a job's report


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="config.yaml (default: ISE_CONFIG or ./)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set stores.collection=v2 (repeatable)",
    )
    parser.add_argument("--report", default=None, help="also write the JSON report here")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray on 127.0.0.1)",
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        # Same typing as ISE__ variables: YAML scalars, so `true`, `3` and `{M: 8}` arrive typed.
        out[key.strip()] = yaml.safe_load(raw)
    return out


def settings_from_args(args: argparse.Namespace) -> Settings:
    """config.yaml + ISE__ env + --set, resolved to absolute paths (workers agree on them)."""
    return load_settings(args.config, overrides=parse_overrides(args.overrides))


def ensure_ray(address: str | None = None, settings: Settings | None = None) -> None:
    """Join the cluster the job runs on (RAY_ADDRESS), or start a local Ray on 127.0.0.1.

    With `settings`, a job whose stores are embedded refuses to run on several nodes: each
    node's tasks would write a store of its own (the service refuses the same way).
    """
    import ray

    from deployments.cluster import init_local_ray, refuse_embedded_stores_on_multinode

    if not ray.is_initialized():
        # Inside `ray job submit` RAY_ADDRESS is set: join it. Outside, init_local_ray pins the
        # new local cluster to loopback (Ray would otherwise probe a public address for its IP).
        init_local_ray(address or os.environ.get("RAY_ADDRESS") or None)
    if settings is not None:
        refuse_embedded_stores_on_multinode(settings)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def write_report(report: dict[str, Any], path: str | None) -> None:
    """Log the report as one JSON line (it ends up in the job logs) and write it if asked."""
    text = json.dumps(report, indent=2, sort_keys=True, default=str)
    logger.info("report: %s", json.dumps(report, sort_keys=True, default=str))
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
        logger.info("report written to %s", out.resolve())


def capped(items: list[Any], limit: int = LIST_LIMIT) -> list[Any]:
    """Reports list at most `limit` entries per kind (the counts stay exact)."""
    return items[:limit]


def job_main(
    module: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    command: Callable[[argparse.Namespace], int],
    argv: list[str] | None = None,
) -> int:
    """The `python -m pipelines.<job>` entry point the three jobs share."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return command(args)
