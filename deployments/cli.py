"""`image-search`: serve the app, index files or folders, search, and run the Ray Data jobs."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from deployments.imaging import SUPPORTED_EXTENSIONS

logger = logging.getLogger("image_search")
DEFAULT_URL = os.environ.get("ISE_URL", "http://127.0.0.1:8000")

# A local single-node Ray must stay on loopback: Ray otherwise swaps 127.0.0.1 for the address
# it finds by probing a public DNS server. With "cluster" mode off (the flag Ray uses on laptops)
# it binds the node to 127.0.0.1. These are read when ray is imported, so set them first.
LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def init_local_ray(
    address: str | None = None, metrics_port: int | None = None, **kwargs: Any
) -> None:
    """Connect to `address`, or start a local Ray pinned to 127.0.0.1 with its dashboard."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
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
        # Logical CPUs are a scheduling quota: with only the physical count, the service's
        # fractional replicas leave a backfill job's actors pending forever on a 2-core laptop.
        "num_cpus": max(4, 2 * (os.cpu_count() or 2)),
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
    }
    if metrics_port:
        local["_metrics_export_port"] = metrics_port
    ray.init(**local, **kwargs)


def cmd_serve(args: argparse.Namespace) -> int:
    """`serve run serve_config.yaml`, with Ray pinned to 127.0.0.1 and host/port from settings."""
    import tempfile

    import yaml
    from ray.serve.scripts import run as serve_run

    from deployments.config import load_settings

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
        from deployments.stores.lite_server import stop_lite_server

        stop_lite_server(vectors_uri)


def iter_images(paths: list[str]) -> Iterator[Path]:
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower().lstrip(".") in SUPPORTED_EXTENSIONS:
                    yield f
        elif p.is_file():
            yield p
        else:
            logger.warning("skipping %s: not a file or folder", p)


def cmd_index(args: argparse.Namespace) -> int:
    """Upload through the batch route, showing a progress bar; report every failure."""
    from tqdm import tqdm

    files = list(iter_images(args.paths))
    counts = {"indexed": 0, "duplicate": 0, "rejected": 0}
    with (
        httpx.Client(base_url=args.url, timeout=300) as client,
        tqdm(total=len(files), unit="img", desc="indexing") as bar,
    ):
        for start in range(0, len(files), args.batch):
            chunk = files[start : start + args.batch]
            parts = [("file", (f.name, f.read_bytes())) for f in chunk]
            resp = client.post("/meta/image/files", files=parts)
            if resp.status_code != 200:
                logger.error("batch failed (%d): %s", resp.status_code, resp.text[:300])
                counts["rejected"] += len(chunk)
            else:
                for f, item in zip(chunk, resp.json()["data"], strict=True):
                    outcome = _outcome(item)
                    counts[outcome] += 1
                    if outcome == "rejected":
                        tqdm.write(f"rejected {f}: {item['message']}", file=sys.stderr)
            bar.update(len(chunk))
            bar.set_postfix(counts)
    logger.info("done: %s", counts)
    return 0 if counts["rejected"] == 0 else 1


def _outcome(item: dict[str, Any]) -> str:
    if item["succeed"]:
        return "indexed"
    return "duplicate" if item["status"] == 409 else "rejected"


def cmd_search(args: argparse.Namespace) -> int:
    data = Path(args.image).read_bytes()
    form: dict[str, Any] = {"limit": str(args.limit)}
    if args.threshold is not None:
        form["threshold"] = str(args.threshold)
    with httpx.Client(base_url=args.url, timeout=120) as client:
        resp = client.post("/sample/file", files={"file": (Path(args.image).name, data)}, data=form)
    body = resp.json()
    if not body.get("succeed"):
        logger.error("search failed (%d): %s", resp.status_code, body.get("message"))
        return 1
    out = sys.stdout
    out.write(f"{'rank':>4}  {'distance':>8}  {'score':>6}  {'meta_uuid':<36}  file_name\n")
    for rank, hit in enumerate(body["data"], 1):
        out.write(
            f"{rank:>4}  {hit['distance']:8.4f}  {hit['score']:6.2f}  "
            f"{hit['meta_uuid']:<36}  {hit['file_name']}\n"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="image-search", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the Serve app (serve_config.yaml) on a local Ray")
    p.add_argument("--config", default=None, help="config.yaml (default: ISE_CONFIG or ./)")
    p.add_argument("--serve-config", default="serve_config.yaml")
    p.add_argument("--address", default=None, help="join a running Ray cluster instead")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("ISE_METRICS_PORT", "8080")),
        help="Prometheus endpoint of the local Ray node (ISE_METRICS_PORT)",
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
    p.set_defaults(func=cmd_search)

    try:
        from pipelines.cli import add_pipeline_commands
    except ImportError:  # pipelines not installed alongside: the online commands still work
        pass
    else:
        add_pipeline_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
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
