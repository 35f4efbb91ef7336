"""`image-search`: serve the app, index files or folders, search, and run the Ray Data jobs."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import httpx

from cli.client import DEFAULT_URL, cmd_index, cmd_search
from cli.jobs import add_pipeline_commands
from cli.keys import add_key_commands
from cli.serve import cmd_serve
from deployments.cluster import DASHBOARD_PORT, pin_ray_to_loopback

logger = logging.getLogger("image_search")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="image-search", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the Serve app (serve_config.yaml) on a local Ray")
    p.add_argument("--config", default=None, help="config.yaml (default: ISE_CONFIG or ./)")
    p.add_argument("--serve-config", default="serve_config.yaml")
    p.add_argument(
        "--address", default=None, help="join this Ray cluster (default: start a new local one)"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("ISE_METRICS_PORT", "8080")),
        help="Prometheus endpoint of the local Ray node (ISE_METRICS_PORT)",
    )
    p.add_argument(
        "--dashboard-port",
        type=int,
        default=int(os.environ.get("ISE_DASHBOARD_PORT", str(DASHBOARD_PORT))),
        help="Ray dashboard of the local Ray node (ISE_DASHBOARD_PORT)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("index", help="index image files or folders through the API")
    p.add_argument("paths", nargs="+")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--batch", type=int, default=16)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="print the most similar stored images")
    p.add_argument("image")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--threshold", type=float, default=None, help="max squared-L2 distance")
    p.add_argument(
        "--tag", action="append", default=[], metavar="TAG",
        help="only images that carry this tag (repeat: every one of them)",
    )  # fmt: skip
    p.add_argument(
        "--mode", choices=("global", "regions"), default=None,
        help="regions: also find a picture from a crop, thumbnail or collage of it "
        "(default: the service's search.mode)",
    )  # fmt: skip
    p.set_defaults(func=cmd_search)

    add_pipeline_commands(sub)
    add_key_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    pin_ray_to_loopback()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args))
    except httpx.HTTPError as exc:
        logger.error("cannot reach the service at %s: %s", getattr(args, "url", "?"), exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
