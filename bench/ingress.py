"""Serve's HTTP proxy against direct ingress, on one running service.

`image-search serve` answers the API port from the Ingress replica itself (direct ingress,
deployments.cluster.direct_ingress_env); Serve's proxy still runs, on a port the service logs.
Both doors lead to the same replicas, stores and model, so one service measured through each
in turn, alternated round by round, isolates what the proxy's hop costs: the same photos
(1600x1200 by default), uploads then searches, at 1 and 16 clients.

    flock /tmp/ise-ray.lock .venv/bin/python -m bench.ingress [--rounds 2] [--images 60]

What it does not show: the reference server (bench.compare has it), and a cluster, where the
proxy stays (README, "How it works").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import processes
from bench.compare import SIGNALS, PhotoMaker, parse_sizes, start_ours, upload_requests
from bench.compare import search_requests as search_requests_for
from bench.loadgen import Outcome, drive

logger = logging.getLogger("bench.ingress")
PROXY_LINE = re.compile(r"Serve's HTTP proxy is on (\S+):(\d+)")
DOORS = ("proxy", "direct")


def proxy_url(server: processes.Server, timeout_s: float = 30.0) -> str:
    """The proxy's address, from the line `image-search serve` logs when it starts."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = PROXY_LINE.search(server.log_tail(200_000))
        if found:
            return f"http://{found.group(1)}:{found.group(2)}"
        time.sleep(0.5)
    raise RuntimeError(f"no proxy port in the service's log:\n{server.log_tail()}")


def p50(out: Outcome) -> float | None:
    return 1000 * statistics.median(out.latencies_s) if out.latencies_s else None


async def one_cell(url: str, photos: list[bytes], clients: int, tag: str) -> dict[str, Any]:
    ups = await drive(url, "/meta/image/file", upload_requests(photos, tag), clients, 300)
    found = await drive(url, "/sample/file", search_requests_for(photos, len(photos)), clients,
                        300)  # fmt: skip
    return {
        "uploads_s": ups.ok / ups.wall_s if ups.wall_s else None,
        "searches_s": found.ok / found.wall_s if found.wall_s else None,
        "search_p50_ms": p50(found),
        "non_200": ups.failed + found.failed,
    }


def run(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    workdir = Path(tempfile.mkdtemp(prefix="ise-ingress-", dir="/tmp"))
    server = start_ours(workdir)
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        processes.wait_ready(server, "/readyz", 600)
        urls = {"direct": server.url, "proxy": proxy_url(server)}
        maker = PhotoMaker()
        (size,) = parse_sizes(args.size)
        for door, url in urls.items():  # warm both paths
            asyncio.run(
                drive(
                    url,
                    "/meta/image/file",
                    upload_requests(maker.make(8, size), f"warm-{door}"),
                    4,
                    120,
                )
            )
        for rnd in range(args.rounds):
            for door in DOORS if rnd % 2 == 0 else DOORS[::-1]:
                for clients in args.clients:
                    photos = maker.make(args.images if clients == 1 else 4 * args.images, size)
                    cell = asyncio.run(one_cell(urls[door], photos, clients, f"{door}{rnd}"))
                    cell.update(round=rnd + 1, clients=clients)
                    results.setdefault(door, []).append(cell)
                    logger.info(
                        "round %d %-6s x%-2d uploads %.1f/s searches %.1f/s p50 %.0f ms%s",
                        rnd + 1,
                        door,
                        clients,
                        cell["uploads_s"] or 0,
                        cell["searches_s"] or 0,
                        cell["search_p50_ms"] or 0,
                        f", {cell['non_200']} not 200" if cell["non_200"] else "",
                    )
    finally:
        with SIGNALS.uninterrupted():
            processes.stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def report(results: dict[str, list[dict[str, Any]]], clients: list[int]) -> None:
    for n in clients:
        for key, label in (("uploads_s", "uploads/s"), ("searches_s", "searches/s"),
                           ("search_p50_ms", "search p50 ms")):  # fmt: skip
            vals = {d: [c[key] for c in results[d] if c["clients"] == n and c[key]]
                    for d in DOORS}  # fmt: skip
            mean = {d: statistics.mean(v) if v else float("nan") for d, v in vals.items()}
            logger.info("x%-2d %-14s proxy %-18s direct %-18s direct/proxy %.2f", n, label,
                        ", ".join(f"{v:.1f}" for v in vals["proxy"]),
                        ", ".join(f"{v:.1f}" for v in vals["direct"]),
                        mean["direct"] / mean["proxy"])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images", type=int, default=60, help="photos per 1-client cell (x4 at more)")
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--size", default="1600x1200")
    args = ap.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    SIGNALS.install()
    results = run(args)
    report(results, args.clients)
    bad = sum(c["non_200"] for cells in results.values() for c in cells)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
