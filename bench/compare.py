"""Ours against the original's design, side by side in one run, on the same real photos.

Starts our service (`image-search serve`, the README's way, on its own ports and data folder)
and measures it, stops it, then does the same with bench/reference_server.py (the original's
design in one process: one uvicorn worker, one image per forward pass, brute-force numpy
search). One server runs at a time: on a 2-core machine two would measure each other.

For each photo size and each number of concurrent clients: N distinct photos are uploaded
through POST /meta/image/file (ingest img/s = photos indexed / wall time), then searched with
through POST /sample/file at the same concurrency (p50 and p99 latency). Every cell uploads photos
neither server has seen, so nothing is deduplicated; both servers get the same photos in the
same order. Ratios are ours / reference: above 1 is better for ingest, below 1 for latency.
Around each phase it also reads the CPU time of every process each server started, and of the
load generator, from /proc, and prints where a request's CPU went (bench.cpu).

    python -m bench.compare [--sizes 640x480,1600x1200,4000x3000] [--clients 1,4,16]
        [--images 96] [--searches 48] [--json results.json] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from PIL import Image

from bench import cpu, processes
from bench.loadgen import Outcome, Request, drive
from bench.photos import real_photos, to_jpeg
from deployments.cluster import free_port

logger = logging.getLogger("bench.compare")
ROOT = Path(__file__).resolve().parents[1]

JPEG_QUALITY = 90
SEARCH_LIMIT = 10
WARM_UPLOADS = 8  # per server before measuring: every deployment and code path once
WARM_SEARCHES = 4
# After the warm-up, measuring starts once the server is quiet: at least SETTLE_MIN_S (longer
# than serve_config.yaml's upscale delays, so that a replica the warm-up's load asked for has
# been started), then its processes the same over SETTLE_STEP_S and under QUIET_CORES busy (an
# idle service keeps 0.2 of the 2 cores busy with Serve's own loops), at most SETTLE_MAX_S.
# What the warm-up set going in the background otherwise ran during the first cell.
SETTLE_MIN_S = 8.0
SETTLE_STEP_S = 2.0
QUIET_CORES = 0.4
SETTLE_MAX_S = 60.0
# The smoke run (CI): one small size, two concurrencies, a handful of photos.
SMOKE: dict[str, str | int] = {"sizes": "640x480", "clients": "1,2", "images": 6, "searches": 6}
SERVERS = ("ours", "ref")
# The model settings the table shows, where they exist (`runtime` is newer than the others).
MODEL_KEYS = ("name", "runtime", "precision", "threads")


# -- photos -------------------------------------------------------------------------------------
class PhotoMaker:
    """Distinct JPEGs of an exact size from the real photos: shifted crops, cut to the size's
    aspect ratio, resized. Distinct bytes across the whole run (checked), so no upload is ever
    a duplicate of another."""

    def __init__(self) -> None:
        self.photos = list(real_photos().values())
        self.next_variant = 0
        self.seen: set[str] = set()

    def make(self, n: int, size: tuple[int, int]) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < n:
            i = self.next_variant
            self.next_variant += 1
            data = to_jpeg(self._variant(i, size), JPEG_QUALITY)
            digest = hashlib.md5(data).hexdigest()
            if digest not in self.seen:
                self.seen.add(digest)
                out.append(data)
        return out

    def _variant(self, i: int, size: tuple[int, int]) -> np.ndarray:
        arr = self.photos[i % len(self.photos)]
        k = i // len(self.photos)
        h, w = arr.shape[:2]
        # The shifts of bench.photos.distinct_images: different pixels for every k < 46189.
        crop = arr[k % 17 : h - (k * 3) % 13, (k * 5) % 19 : w - k % 11]
        ch, cw = crop.shape[:2]
        tw, th = size
        if cw * th > ch * tw:  # too wide for the target's aspect ratio: cut the sides
            keep = ch * tw // th
            crop = crop[:, (cw - keep) // 2 : (cw - keep) // 2 + keep]
        else:
            keep = cw * th // tw
            crop = crop[(ch - keep) // 2 : (ch - keep) // 2 + keep]
        resized = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BICUBIC)
        return np.asarray(resized)


@dataclass(frozen=True)
class Cell:
    size: tuple[int, int]
    clients: int
    photos: list[bytes]  # uploaded, then searched with (cycled): the top hit should be itself

    @property
    def label(self) -> str:
        return f"{self.size[0]}x{self.size[1]}"


def upload_requests(photos: list[bytes], prefix: str) -> list[Request]:
    return [({"file": (f"{prefix}-{i}.jpg", data, "image/jpeg")}, {})
            for i, data in enumerate(photos)]  # fmt: skip


def search_requests(photos: list[bytes], n: int) -> list[Request]:
    return [({"file": ("query.jpg", photos[i % len(photos)], "image/jpeg")},
             {"limit": str(SEARCH_LIMIT)}) for i in range(n)]  # fmt: skip


# -- one server ---------------------------------------------------------------------------------
def start_ours(workdir: Path, serve_args: Sequence[str] = ()) -> processes.Server:
    """`image-search serve` as the README runs it, on free ports and a private data folder;
    `serve_args` are appended to the command (e.g. another --serve-config)."""
    return processes.start_service(workdir, {
        "ISE__STORES__METADATA_URI": f"sqlite:///{workdir}/meta.db",
        "ISE__STORES__VECTORS_URI": f"{workdir}/vectors.db",
        "ISE__STORES__LITE_PORT": str(free_port()),
    }, serve_args)  # fmt: skip


def start_reference(workdir: Path) -> processes.Server:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.reference_server", "--port", str(port),
           "--data", str(workdir / "data")]  # fmt: skip
    return processes.start("ref", cmd, f"http://127.0.0.1:{port}", workdir, dict(os.environ),
                           ROOT)  # fmt: skip


def summarise(
    ingest: Outcome, search: Outcome, top1_self: int, cpu_use: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    lat = np.array(search.latencies_s) * 1000
    p50, p99 = (float(v) for v in np.percentile(lat, [50, 99])) if len(lat) else (None, None)
    return {
        "ingest_img_s": ingest.ok / ingest.wall_s if ingest.ok and ingest.wall_s else None,
        "ingest_wall_s": ingest.wall_s,
        "ingest_requests": ingest.requests,
        "ingest_statuses": dict(ingest.statuses),
        "ingest_retries_503": ingest.retries_503,
        "search_p50_ms": p50,
        "search_p99_ms": p99,
        "search_requests": search.requests,
        "search_statuses": dict(search.statuses),
        "search_retries_503": search.retries_503,
        "search_top1_is_query": top1_self,
        "non_200": ingest.failed + search.failed,
        "ingest_cpu": cpu_use["ingest"],
        "search_cpu": cpu_use["search"],
    }


async def measure_cell(
    url: str, cell: Cell, searches: int, deadline_s: float, probe: Callable[[], cpu.Sample]
) -> dict[str, Any]:
    """One cell's uploads then searches; `probe` samples the server's CPU around each."""
    prefix = f"{cell.label}-c{cell.clients}"
    cpu_use: dict[str, dict[str, Any]] = {}
    before = probe()
    ingest = await drive(url, "/meta/image/file", upload_requests(cell.photos, prefix),
                         cell.clients, deadline_s)  # fmt: skip
    cpu_use["ingest"] = cpu.spent(before, probe(), ingest.wall_s, ingest.requests)
    # Sanity, not speed: a search with a stored photo must find that photo first (the
    # default meta_uuid is the md5 of the bytes, on both servers).
    queries = search_requests(cell.photos, searches)
    top1 = 0

    def check(i: int, body: Any) -> None:
        nonlocal top1
        hits = body.get("data") or []
        want = hashlib.md5(cell.photos[i % len(cell.photos)]).hexdigest()
        top1 += bool(hits) and hits[0].get("meta_uuid") == want

    before = probe()
    search = await drive(url, "/sample/file", queries, cell.clients, deadline_s, check)
    cpu_use["search"] = cpu.spent(before, probe(), search.wall_s, search.requests)
    return summarise(ingest, search, top1, cpu_use)


async def warm(url: str, photos: list[bytes], deadline_s: float) -> None:
    up = await drive(url, "/meta/image/file", upload_requests(photos, "warm"), 4, deadline_s)
    found = await drive(url, "/sample/file", search_requests(photos, WARM_SEARCHES), 2,
                        deadline_s)  # fmt: skip
    if up.failed or found.failed:
        logger.warning("warm-up answers: uploads %s, searches %s", dict(up.statuses),
                       dict(found.statuses))  # fmt: skip


def settle(probe: Callable[[], cpu.Sample]) -> float:
    """Wait for the server to be quiet after its warm-up (SETTLE_*); the seconds waited."""
    began = time.monotonic()
    time.sleep(SETTLE_MIN_S)
    last = probe()
    while time.monotonic() - began < SETTLE_MAX_S:
        time.sleep(SETTLE_STEP_S)
        now = probe()
        quiet = cpu.busy_cores(last, now, SETTLE_STEP_S) < QUIET_CORES
        if quiet and set(now.cpu_s) == set(last.cpu_s):
            break
        last = now
    return time.monotonic() - began


def run_server(
    name: str, cells: list[Cell], warm_photos: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """Start one server, warm it, measure every cell, stop it; returns its results."""
    # Short and under /tmp: Ray's unix socket paths below it must stay under 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix=f"ise-cmp-{name}-", dir="/tmp"))
    starter = start_ours if name == "ours" else start_reference
    server = starter(workdir)
    began = time.monotonic()

    def probe() -> cpu.Sample:
        # Its own session (processes.start), or naming its private folder (Ray's workers).
        return cpu.sample(server.proc.pid, str(workdir))

    try:
        ready = processes.wait_ready(server, "/readyz", args.ready_timeout)
        logger.info("%s ready in %.0fs at %s", name, time.monotonic() - began, server.url)
        asyncio.run(warm(server.url, warm_photos, args.cell_timeout))
        waited = settle(probe)
        logger.info("%s quiet %.0fs after its warm-up", name, waited)
        results: dict[str, Any] = {"readyz": ready.json(), "settle_s": waited, "cells": {}}
        for cell in cells:
            res = asyncio.run(measure_cell(server.url, cell, args.searches, args.cell_timeout,
                                           probe))  # fmt: skip
            results["cells"][(cell.label, cell.clients)] = res
            logger.info("%s %s x%-2d ingest %s img/s, search p50 %s ms p99 %s ms%s", name,
                        cell.label, cell.clients, fmt(res["ingest_img_s"], 1),
                        fmt(res["search_p50_ms"], 0), fmt(res["search_p99_ms"], 0),
                        f", {res['non_200']} not 200" if res["non_200"] else "")  # fmt: skip
        return results
    except BaseException:
        logger.error("%s failed; the end of its log:\n%s", name, server.log_tail())
        raise
    finally:
        with SIGNALS.uninterrupted():
            processes.stop(server)
        if args.keep_logs:
            logger.info("%s log: %s", name, server.log)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# -- report -------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def loadavg(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def ratio(ours: float | None, ref: float | None) -> float | None:
    return ours / ref if ours is not None and ref else None


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "cpu_model": model, "loadavg_at_start": list(os.getloadavg())}  # fmt: skip


def our_settings() -> dict[str, Any]:
    """The model settings our service resolves from config.yaml and ISE__ variables."""
    from image_search.config import load_settings

    model = load_settings(ROOT / "config.yaml").model.model_dump()
    return {k: model[k] for k in MODEL_KEYS if k in model}


def column(row: dict[str, Any], key: str, digits: int, width: int) -> str:
    """`ours / ref (ratio)` for one figure of one row, right-aligned."""
    text = (f"{fmt(row['ours'][key], digits)} / {fmt(row['ref'][key], digits)} "
            f"({fmt(row['ratio'][key], 2)})")  # fmt: skip
    return f"{text:>{width}}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = (f"{'size':>9} {'clients':>7} | {'ingest img/s ours / ref (ratio)':>31} | "
            f"{'search p50 ms ours / ref (ratio)':>32} | {'search p99 ms ours / ref (ratio)':>32}"
            f" | non-200 ours/ref")  # fmt: skip
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row['size']:>9} {row['clients']:>7} | "
                     f"{column(row, 'ingest_img_s', 1, 31)} | "
                     f"{column(row, 'search_p50_ms', 0, 32)} | "
                     f"{column(row, 'search_p99_ms', 0, 32)} | "
                     f"{row['ours']['non_200']}/{row['ref']['non_200']}")  # fmt: skip
    return lines


def cpu_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        for phase in ("ingest", "search"):
            for name in SERVERS:
                use = row[name][f"{phase}_cpu"]
                lines.append(f"{row['size']:>9} {row['clients']:>3} {phase:<6} {name:<4} "
                             f"{cpu.describe(use)}")  # fmt: skip
    return lines


def report(cells: list[Cell], results: dict[str, dict[str, Any]], args: argparse.Namespace,
           host: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    host = {**host, "loadavg_at_end": list(os.getloadavg())}
    rows = []
    for cell in cells:
        key = (cell.label, cell.clients)
        ours, ref = results["ours"]["cells"][key], results["ref"]["cells"][key]
        rows.append({
            "size": cell.label, "clients": cell.clients, "images": len(cell.photos),
            "mean_photo_bytes": int(np.mean([len(p) for p in cell.photos])),
            "ours": ours, "ref": ref,
            "ratio": {k: ratio(ours[k], ref[k])
                      for k in ("ingest_img_s", "search_p50_ms", "search_p99_ms")},
        })  # fmt: skip
    settings = {
        "images_per_cell": args.images, "searches_per_cell": args.searches,
        "search_limit": SEARCH_LIMIT, "jpeg_quality": JPEG_QUALITY,
        "ours_model": our_settings(), "ours_readyz": results["ours"]["readyz"],
        "ref_readyz": results["ref"]["readyz"],
        "settle_s": {name: round(results[name]["settle_s"], 1) for name in SERVERS},
    }  # fmt: skip
    ref_model = {k: v for k, v in results["ref"]["readyz"].get("model", {}).items()
                 if k in MODEL_KEYS}  # fmt: skip
    logger.info("")
    logger.info("ours vs the original's design (ref), same photos; ratio = ours / ref "
                "(ingest: above 1 is ours faster; latency: below 1 is ours faster)")  # fmt: skip
    logger.info("machine: %d CPUs (%d usable), %s; load average at start %s, at end %s "
                "(other work on the machine moves these figures)", host["cpu_count"],
                host["cpus_usable"], host["cpu_model"] or "unknown CPU",
                loadavg(host["loadavg_at_start"]), loadavg(host["loadavg_at_end"]))  # fmt: skip
    logger.info("ours: image-search serve (serve_config.yaml), model %s; /readyz %s",
                json.dumps(settings["ours_model"], sort_keys=True),
                json.dumps({k: v for k, v in settings["ours_readyz"].items()
                            if k not in ("succeed", "message")}, sort_keys=True))  # fmt: skip
    logger.info("ref: bench.reference_server (1 uvicorn worker, one image per forward pass), "
                "model %s", json.dumps(ref_model, sort_keys=True))  # fmt: skip
    logger.info("%d photos uploaded per cell (JPEG q%d), then %d searches (limit %d); "
                "non-200 answers are counted, 503 + Retry-After honoured and retried",
                args.images, JPEG_QUALITY, args.searches, SEARCH_LIMIT)  # fmt: skip
    by_size = {row["size"]: row["mean_photo_bytes"] for row in rows}
    # Real photos scaled up are smoother than a camera's, so their files are smaller.
    logger.info("mean photo: %s", ", ".join(f"{s} {b / 1000:.0f} kB" for s, b in by_size.items()))
    for line in table(rows):
        logger.info("%s", line)
    # What bounds each figure: with both cores busy, where the CPU of a request went.
    logger.info("")
    logger.info("CPU per request by process, from /proc (every process the server started, and "
                "the load generator)")  # fmt: skip
    for line in cpu_lines(rows):
        logger.info("%s", line)
    return {"machine": host, "settings": settings, "cells": rows}


# -- main ---------------------------------------------------------------------------------------
def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        w, h = (int(v) for v in part.lower().split("x"))
        sizes.append((w, h))
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="640x480,1600x1200,4000x3000", help="WxH,WxH,...")
    ap.add_argument("--clients", default="1,4,16", help="concurrent clients per cell: 1,4,16")
    ap.add_argument("--images", type=int, default=96, help="photos uploaded per cell")
    ap.add_argument("--searches", type=int, default=48, help="searches per cell")
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    ap.add_argument("--smoke", action="store_true",
                    help=f"a tiny run for CI: {SMOKE} (overrides those options)")  # fmt: skip
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to start")
    ap.add_argument(
        "--cell-timeout",
        type=float,
        default=600.0,
        help="seconds per phase (upload or search) of a cell; the rest is not sent",
    )
    ap.add_argument("--keep-logs", action="store_true", help="keep the servers' work folders")
    args = ap.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.images < 1 or args.searches < 1:
        ap.error("--images and --searches must be at least 1")
    return args


class _Signals:
    """Ctrl-C and SIGTERM unwind through every `finally`, which stops the server running then;
    one arriving while a server is being stopped waits until that stop is done."""

    def __init__(self) -> None:
        self.stopping = False
        self.pending: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            self.pending = signum
            return
        self._raise(signum)

    @staticmethod
    def _raise(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    @contextlib.contextmanager
    def uninterrupted(self) -> Iterator[None]:
        self.stopping = True
        try:
            yield
        finally:
            self.stopping = False
            if self.pending is not None:
                self._raise(self.pending)


SIGNALS = _Signals()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    SIGNALS.install()
    host = machine()
    sizes = parse_sizes(args.sizes)
    clients = [int(c) for c in args.clients.split(",")]
    # Every photo is made before any server starts: making them takes CPU too.
    began = time.monotonic()
    maker = PhotoMaker()
    warm_photos = maker.make(WARM_UPLOADS, sizes[0])
    cells = [Cell(size, n, maker.make(args.images, size)) for size in sizes for n in clients]
    logger.info("%d photos made in %.0fs", sum(len(c.photos) for c in cells) + WARM_UPLOADS,
                time.monotonic() - began)  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in SERVERS:
            results[name] = run_server(name, cells, warm_photos, args)
    except KeyboardInterrupt:
        logger.error("interrupted; the servers are stopped")
        return 130
    out = report(cells, results, args, host)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
