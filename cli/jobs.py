"""`image-search backfill|reembed|reconcile|duplicates`: `python -m pipelines.X` as commands."""

from __future__ import annotations

import argparse
from typing import Any


def add_pipeline_commands(subparsers: Any) -> None:
    """Called by cli.main.build_parser with its subparsers object."""
    from pipelines import backfill, duplicates, reconcile, reembed

    for name, module, help_text in (
        ("backfill", backfill, "index a folder, s3://bucket/prefix or manifest (Ray Data job)"),
        ("reembed", reembed, "re-embed every image with another model, then switch the service"),
        ("reconcile", reconcile, "compare the three stores; --fix repairs what is safe"),
        ("duplicates", duplicates, "groups of copies and near-duplicates: JSON + CSV report"),
    ):
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name, help=help_text, description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        module.add_arguments(parser)
        parser.set_defaults(func=module.command)
