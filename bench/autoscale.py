"""Autoscaling seen working: the replicas of each deployment, once a second, under a bounded load.

Starts the service on its defaults (`image-search serve` with serve_config.yaml, on free ports
and a private data folder, as bench/compare.py does) and warms it. Then it reads, once a second,
how many replicas of each deployment are RUNNING from Serve's own status (the Ray dashboard's
GET /api/serve/applications/, what `serve status` reads), first idle for a few seconds, then
while `--clients` concurrent clients upload and search with real photos for `--load` seconds,
then with no load until every autoscaled deployment is back at its min_replicas. That wait is
bounded by the slowest downscale in serve_config.yaml (downscale_delay_s plus the look-back
period Serve averages its metrics over) plus a margin.

It logs a timeline in 10 s windows (load, replicas per deployment, the requests Serve's
autoscaler counted for each autoscaled deployment -- read from the node's Prometheus endpoint,
they say why a deployment did or did not scale --, requests/s, p50 latency), a
one-character-per-window figure of the replicas, when each autoscaled deployment first reached
max_replicas and when it was back at min_replicas, and writes every sample as JSON.

`--set Deployment.key=value` runs a private copy of serve_config.yaml with that changed, to try
a change before making it; serve_config.yaml itself is never written.

    python -m bench.autoscale [--clients 16] [--load 90] [--size 1024x768] [--photos 1500]
        [--set Embedder.autoscaling_config.target_ongoing_requests=8] [--out autoscale.json]
        [--short] [--keep-logs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import itertools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from bench import processes
from bench.compare import (
    SIGNALS,
    PhotoMaker,
    fmt,
    parse_sizes,
    search_requests,
    start_ours,
    upload_requests,
)
from bench.loadgen import REQUEST_TIMEOUT_S, Outcome, Request, drive
from bench.loadgen import _one as post_once

logger = logging.getLogger("bench.autoscale")
ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve_config.yaml"  # the file `image-search serve` runs by default
STATUS_PATH = "/api/serve/applications/"
# `image-search serve` logs "API: ...  dashboard: http://127.0.0.1:<port> ..." before it
# deploys: the only place that knows the dashboard port of the cluster it starts.
DASHBOARD_LINE = re.compile(r"dashboard: (http://127\.0\.0\.1:\d+)")
METRICS_LINE = re.compile(r"Prometheus: (http://127\.0\.0\.1:\d+/metrics)")
# What Serve's autoscaler decides on, from the node's Prometheus endpoint: its input (the
# requests it counts for a deployment, averaged over look_back_period_s: queued at the callers'
# handles plus running in replicas) and its decision (replicas wanted, before min/max). A
# replica is added only while input > target_ongoing_requests x replicas RUNNING.
AUTOSCALER_METRICS = {
    "ray_serve_autoscaling_total_requests": "requests",
    "ray_serve_autoscaling_desired_replicas": "desired",
}
METRIC_LINE = re.compile(r"^(\w+)\{([^}]*)\}\s+(\S+)")

SAMPLE_EVERY_S = 1.0
STATUS_TIMEOUT_S = 5.0  # one status read; a slower one is a lost sample, not a hang
METRICS_EVERY_S = 5.0  # Ray exports its metrics every few seconds: faster reads show nothing new
WINDOW_S = 10.0  # the table's and the figure's resolution
IDLE_BEFORE_S = 10.0  # one window at rest before the load: the starting point of the figure
MIN_COOL_S = WINDOW_S  # at least one window without load, even if nothing scaled
COOL_MARGIN_S = 60.0  # on top of downscale_delay_s + look_back_period_s
SETTLE_TIMEOUT_S = 120.0  # every deployment RUNNING at its starting count, after /readyz
SEARCH_LIMIT = 10
# The short run: a check that everything works end to end, not a measurement. It does not
# wait for the downscale (minutes by serve_config.yaml's delays).
SHORT: dict[str, Any] = {"load": 20.0, "photos": 200, "idle": 3.0, "max_cool": 20.0}


# -- what serve_config.yaml says ----------------------------------------------------------------
@dataclass(frozen=True)
class Scaling:
    """A deployment's replica bounds and the autoscaler's timing, from serve_config.yaml."""

    min_replicas: int
    max_replicas: int
    autoscaled: bool
    target_ongoing_requests: float | None = None
    upscale_delay_s: float = 0.0
    downscale_delay_s: float = 0.0
    look_back_period_s: float = 0.0

    @property
    def settle_s(self) -> float:
        """How long after the load the autoscaler may take to return to min_replicas: the
        metrics it averages must fall (look-back), then stay low for the downscale delay."""
        return self.downscale_delay_s + self.look_back_period_s if self.autoscaled else 0.0


def read_scaling(doc: dict[str, Any], app: str | None = None) -> tuple[str, dict[str, Scaling]]:
    """The application's name and each deployment's Scaling, from a parsed serve_config.yaml.
    Unset autoscaling fields take Serve's own defaults (AutoscalingConfig), never ours."""
    from ray.serve.config import AutoscalingConfig

    apps = doc.get("applications") or []
    chosen = next((a for a in apps if app is None or a.get("name") == app), None)
    if chosen is None:
        raise ValueError(f"no application {app!r} in the serve config")
    out: dict[str, Scaling] = {}
    for dep in chosen.get("deployments") or []:
        auto = dep.get("autoscaling_config")
        if auto:
            cfg = AutoscalingConfig(**auto)
            out[dep["name"]] = Scaling(
                cfg.min_replicas, cfg.max_replicas, True, cfg.get_target_ongoing_requests(),
                cfg.upscale_delay_s, cfg.downscale_delay_s, cfg.look_back_period_s,
            )  # fmt: skip
        else:
            n = int(dep.get("num_replicas", 1))
            out[dep["name"]] = Scaling(n, n, False)
    return str(chosen.get("name", "default")), out


def apply_overrides(doc: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of a parsed serve config with `Deployment.key[.key...]=value` set in every
    application that has that deployment (value read as YAML). To try a change of
    serve_config.yaml without editing it: the service then runs the copy."""
    out: dict[str, Any] = copy.deepcopy(doc)
    for item in overrides:
        path, sep, raw = item.partition("=")
        name, *keys = path.split(".")
        if not sep or not keys:
            raise ValueError(f"{item!r}: expected Deployment.key=value")
        found = [d for a in out.get("applications") or [] for d in a.get("deployments") or []
                 if d.get("name") == name]  # fmt: skip
        if not found:
            raise ValueError(f"{item!r}: no deployment {name!r} in the serve config")
        for dep in found:
            node = dep
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = yaml.safe_load(raw)
    return out


# -- what Serve says ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Replicas:
    """One deployment at one moment: replicas RUNNING, the count Serve is heading for."""

    running: int
    target: int | None
    status: str


def replica_counts(details: dict[str, Any], app: str) -> dict[str, Replicas]:
    """Replicas per deployment of `app`, from the payload of GET /api/serve/applications/
    (Serve's ServeInstanceDetails). Only RUNNING replicas count: a STARTING one serves nothing
    yet, a STOPPING one nothing more."""
    deployments = ((details.get("applications") or {}).get(app) or {}).get("deployments") or {}
    out: dict[str, Replicas] = {}
    for name, dep in deployments.items():
        replicas = dep.get("replicas") or []
        running = sum(1 for r in replicas if r.get("state") == "RUNNING")
        target = dep.get("target_num_replicas")
        out[name] = Replicas(running, None if target is None else int(target),
                             str(dep.get("status", "")))  # fmt: skip
    return out


def at_rest(now: dict[str, Replicas], scaling: dict[str, Scaling]) -> bool:
    """Every autoscaled deployment RUNNING min_replicas, and Serve heading nowhere else."""
    for name, sc in scaling.items():
        if not sc.autoscaled:
            continue
        rep = now.get(name)
        if rep is None or rep.running != sc.min_replicas:
            return False
        if rep.target is not None and rep.target != sc.min_replicas:
            return False
    return True


def dashboard_url(log_text: str) -> str:
    match = DASHBOARD_LINE.search(log_text)
    if not match:
        raise RuntimeError("the service did not log its dashboard URL")
    return match.group(1)


def metrics_url(log_text: str) -> str | None:
    match = METRICS_LINE.search(log_text)
    return match.group(1) if match else None


def autoscaler_metrics(text: str, app: str) -> dict[str, dict[str, float]]:
    """{deployment: {"requests": ..., "desired": ...}} of `app` from a Prometheus text page."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if not match or match.group(1) not in AUTOSCALER_METRICS:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2)))
        if labels.get("application") != app or "deployment" not in labels:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        out.setdefault(labels["deployment"], {})[AUTOSCALER_METRICS[match.group(1)]] = value
    return out


def dashboard_headers(url: str) -> dict[str, str]:
    """Headers for the dashboard's REST API. A new local cluster is in token mode once
    ~/.ray/auth_token exists (Ray's default). Then Ray's own client code supplies the token, as
    it does for `ray job submit` (docs/pipelines.md): this script never reads the token."""
    mode = httpx.get(url + "/api/authentication_mode", timeout=STATUS_TIMEOUT_S).json()
    if mode.get("authentication_mode") != "token":
        return {}
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )

    # What Ray's CLI does first. Ray reads the mode once per process (importing ray.serve for
    # the config's defaults already did); this also refreshes that. Only this process: the
    # service was started before, with the environment it would have had anyway.
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    headers = dict(get_auth_headers_if_auth_enabled({}))
    if not headers:
        raise RuntimeError("the service's dashboard wants a Ray token and Ray found none for "
                           "this process (RAY_AUTH_MODE set to something else?)")  # fmt: skip
    return headers


# -- one run's record ---------------------------------------------------------------------------
@dataclass
class Sample:
    t: float  # monotonic seconds, made relative to the load's start in the report
    replicas: dict[str, Replicas] | None  # None: this read failed (see error)
    error: str | None = None


@dataclass
class Done:
    t: float  # when the answer came (monotonic, later relative to the load's start)
    kind: str  # upload | search
    status: str  # "200", "503", ... or an httpx exception's name
    latency_s: float  # from the first try to the final answer, 503 waits included


@dataclass
class Metrics:
    t: float  # monotonic, later relative to the load's start
    values: dict[str, dict[str, float]]  # autoscaler_metrics(): {deployment: {requests, desired}}


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    metrics: list[Metrics] = field(default_factory=list)
    done: list[Done] = field(default_factory=list)
    load_start: float = 0.0
    load_end: float = 0.0  # the last client's last answer: load is on until then
    uploads_left_out: int = 0  # uploads that became searches: the photo pool ran out


# -- the timeline -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    start: float  # seconds from the load's start
    load: str  # on | off | part
    replicas: dict[str, tuple[int, int]]  # fewest and most RUNNING seen in the window
    ok: int
    failed: int
    rps: float  # answered 200 per second
    p50_ms: float | None
    # The most requests Serve's autoscaler counted per deployment in the window (its input,
    # already averaged over look_back_period_s); absent where no metric was read.
    counted: dict[str, float] = field(default_factory=dict)
    at_end: dict[str, int] = field(default_factory=dict)  # RUNNING at the window's last sample


def windows(
    samples: list[Sample],
    done: list[Done],
    load: tuple[float, float],
    width: float = WINDOW_S,
    metrics: list[Metrics] | None = None,
) -> list[Window]:
    """Samples, answers and autoscaler metrics (times relative to the load's start) in windows
    of `width` s, aligned on the load's start."""
    times = [s.t for s in samples] + [d.t for d in done]
    if not times:
        return []
    first = int(np.floor(min(times) / width))
    last = int(np.floor(max(times) / width))
    rows = []
    for k in range(first, last + 1):
        lo, hi = k * width, (k + 1) * width
        overlap = min(hi, load[1]) - max(lo, load[0])
        state = "on" if overlap >= width else "off" if overlap <= 0 else "part"
        seen: dict[str, list[int]] = {}
        for s in samples:
            if lo <= s.t < hi and s.replicas:
                for name, rep in s.replicas.items():
                    seen.setdefault(name, []).append(rep.running)
        answers = [d for d in done if lo <= d.t < hi]
        ok = [d.latency_s for d in answers if d.status == "200"]
        counted: dict[str, float] = {}
        for m in metrics or []:
            if lo <= m.t < hi:
                for name, values in m.values.items():
                    if "requests" in values:
                        counted[name] = max(counted.get(name, 0.0), values["requests"])
        rows.append(Window(
            lo, state, {n: (min(v), max(v)) for n, v in seen.items()}, len(ok),
            len(answers) - len(ok), len(ok) / width,
            float(np.percentile(ok, 50)) * 1000 if ok else None, counted,
            {n: v[-1] for n, v in seen.items()},
        ))  # fmt: skip
    return rows


def scaling_summary(samples: list[Sample], scaling: dict[str, Scaling], load_end: float,
                    metrics: list[Metrics] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per autoscaled deployment: the most replicas RUNNING, when it first reached
    max_replicas, and when it was first back at min_replicas after being above it
    (seconds from the load's start; None: did not happen); and the most requests the
    autoscaler counted, next to what one replica is meant to carry (target_ongoing_requests):
    above it is what makes a second replica."""
    out: dict[str, dict[str, Any]] = {}
    for name, sc in scaling.items():
        if not sc.autoscaled:
            continue
        series = [(s.t, s.replicas[name].running) for s in samples
                  if s.replicas and name in s.replicas]  # fmt: skip
        peak = max((n for _, n in series), default=None)
        at_max = next((t for t, n in series if n >= sc.max_replicas), None)
        first_up = next((t for t, n in series if n > sc.min_replicas), None)
        back = None
        if first_up is not None:
            back = next((t for t, n in series if t > first_up and n <= sc.min_replicas), None)
        out[name] = {
            "min_replicas": sc.min_replicas, "max_replicas": sc.max_replicas,
            "target_ongoing_requests": sc.target_ongoing_requests, "peak": peak,
            "first_above_min_s": first_up, "first_at_max_s": at_max, "back_at_min_s": back,
            "back_after_load_s": None if back is None else back - load_end,
            "most_counted_requests": max((m.values[name]["requests"] for m in metrics or []
                                          if "requests" in m.values.get(name, {})),
                                         default=None),
        }  # fmt: skip
    return out


def replicas_cell(span: tuple[int, int] | None) -> str:
    if span is None:
        return "?"
    return str(span[0]) if span[0] == span[1] else f"{span[0]}-{span[1]}"


def table(rows: list[Window], names: list[str], watched: Sequence[str] = ()) -> list[str]:
    """Replicas per deployment ("1-2": changed within the window), then for each `watched`
    deployment the requests its autoscaler counted, then what the load got."""
    head = (f"{'t s':>9} {'load':>4} | " + " ".join(f"{n:>8}" for n in names) + " | "
            + "".join(f"{n[:8] + ' n':>11}" for n in watched)
            + f" | {'req/s':>5} {'p50 ms':>6} {'non-200':>7}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for w in rows:
        span = f"{w.start:.0f}..{w.start + WINDOW_S:.0f}"
        cells = " ".join(f"{replicas_cell(w.replicas.get(n)):>8}" for n in names)
        counted = "".join(f"{fmt(w.counted.get(n), 1):>11}" for n in watched)
        lines.append(f"{span:>9} {w.load:>4} | {cells} | {counted} | {w.rps:>5.1f} "
                     f"{fmt(w.p50_ms, 0):>6} {w.failed:>7}")  # fmt: skip
    return lines


def figure(rows: list[Window], names: list[str]) -> list[str]:
    """One character per window: load (# on, + part, . off), then the replicas RUNNING per
    deployment at the window's end (a change shows in the window it happened in). Compact
    enough for the README."""
    if not rows:
        return []
    width = max(len(n) for n in [*names, "load"])
    marks = {"on": "#", "part": "+", "off": "."}
    lines = [f"{'t s':<{width}}  from {rows[0].start:.0f}, {WINDOW_S:.0f} s per character",
             f"{'load':<{width}}  " + "".join(marks[w.load] for w in rows)]  # fmt: skip
    for name in names:
        cells = "".join(str(w.at_end[name]) if name in w.at_end else "?" for w in rows)
        lines.append(f"{name:<{width}}  {cells}")
    return lines


# -- load and sampling --------------------------------------------------------------------------
async def drive_load(url: str, photos: list[bytes], clients: int, duration_s: float,
                     run: Run) -> None:  # fmt: skip
    """`clients` closed-loop clients for `duration_s`: every other request uploads a photo
    not yet uploaded, the others search with one of the photos. Each answer is recorded with
    its time, so the table can show what the load got in each window."""
    ops = itertools.count()
    uploads = iter(enumerate(photos))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S,
                                 limits=limits) as client:  # fmt: skip
        run.load_start = time.monotonic()
        stop_at = run.load_start + duration_s

        async def one_client() -> None:
            while time.monotonic() < stop_at:
                k = next(ops)
                nxt = next(uploads, None) if k % 2 == 0 else None
                if k % 2 == 0 and nxt is None:
                    run.uploads_left_out += 1
                if nxt is not None:
                    i, data = nxt
                    kind, path = "upload", "/meta/image/file"
                    req: Request = ({"file": (f"as-{i}.jpg", data, "image/jpeg")}, {})
                else:
                    kind, path = "search", "/sample/file"
                    req = ({"file": ("q.jpg", photos[k % len(photos)], "image/jpeg")},
                           {"limit": str(SEARCH_LIMIT)})  # fmt: skip
                out = Outcome(1)
                began = time.monotonic()
                await post_once(client, path, req, out)
                ended = time.monotonic()
                run.done.append(Done(ended, kind, next(iter(out.statuses), "none"),
                                     ended - began))  # fmt: skip

        await asyncio.gather(*(one_client() for _ in range(clients)))
        run.load_end = time.monotonic()


async def read_status(client: httpx.AsyncClient, app: str) -> Sample:
    began = time.monotonic()
    try:
        r = await client.get(STATUS_PATH)
        if r.status_code in (401, 403):  # will not pass on a retry: stop here, say why
            raise PermissionError(f"{STATUS_PATH}: {r.status_code} {r.text[:200]}")
        r.raise_for_status()
        replicas = replica_counts(r.json(), app)
    except (httpx.HTTPError, ValueError) as exc:
        return Sample(time.monotonic(), None, f"{type(exc).__name__}: {exc}"[:200])
    # The middle of the read: the state it reports is from somewhere in between.
    return Sample((began + time.monotonic()) / 2, replicas)


async def sample_until(client: httpx.AsyncClient, app: str, run: Run,
                       stop: asyncio.Event) -> None:  # fmt: skip
    """A status read once a second (the next one right away if a read took longer)."""
    next_at = time.monotonic()
    while not stop.is_set():
        run.samples.append(await read_status(client, app))
        next_at = max(next_at + SAMPLE_EVERY_S, time.monotonic())
        with contextlib.suppress(TimeoutError):  # the second is up, or the stop came
            await asyncio.wait_for(stop.wait(), timeout=next_at - time.monotonic())


async def read_metrics_until(url: str, app: str, run: Run, stop: asyncio.Event) -> None:
    """The autoscaler's metrics every few seconds; a failed read is only a gap in the table."""
    async with httpx.AsyncClient(timeout=STATUS_TIMEOUT_S) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                r = await client.get(url)
                if r.status_code == 200:
                    run.metrics.append(Metrics(time.monotonic(), autoscaler_metrics(r.text, app)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=METRICS_EVERY_S)


async def settle(client: httpx.AsyncClient, app: str, scaling: dict[str, Scaling]) -> None:
    """Wait until every deployment RUNS its starting count (min_replicas) and Serve heads for
    no other: /readyz answers before that can be true, a replica still starting would look
    like a scale-up, and one the warm-up asked for must be gone before the figure starts."""
    timeout = SETTLE_TIMEOUT_S + max(sc.settle_s for sc in scaling.values())
    began = time.monotonic()
    last: Sample | None = None
    while time.monotonic() - began < timeout:
        last = await read_status(client, app)
        if (
            last.replicas
            and at_rest(last.replicas, scaling)
            and all(
                name in last.replicas and last.replicas[name].running == sc.min_replicas
                for name, sc in scaling.items()
            )
        ):
            if time.monotonic() - began > 10 * SAMPLE_EVERY_S:
                logger.info("at min_replicas after %.0fs", time.monotonic() - began)
            return
        await asyncio.sleep(SAMPLE_EVERY_S)
    raise TimeoutError(f"deployments not at their starting counts after {timeout:.0f}s: "
                       f"{last}")  # fmt: skip


async def warm_up(url: str, photos: list[bytes]) -> None:
    """Every deployment and code path once, one request at a time: a concurrent warm-up can
    itself count as load for the autoscaler (look_back_period_s) and start the run scaled."""
    up = await drive(url, "/meta/image/file", upload_requests(photos, "warm"), 1, 300.0)
    found = await drive(url, "/sample/file", search_requests(photos, len(photos) // 2), 1, 300.0)
    if up.failed or found.failed:
        logger.warning("warm-up answers: uploads %s, searches %s", dict(up.statuses),
                       dict(found.statuses))  # fmt: skip


async def experiment(url: str, dash: str, prometheus: str | None, app: str,
                     scaling: dict[str, Scaling], photos: list[bytes],
                     args: argparse.Namespace) -> Run:  # fmt: skip
    run = Run()
    headers = dashboard_headers(dash)
    async with httpx.AsyncClient(base_url=dash, headers=headers,
                                 timeout=STATUS_TIMEOUT_S) as status:  # fmt: skip
        await settle(status, app, scaling)
        stop = asyncio.Event()
        samplers = [asyncio.create_task(sample_until(status, app, run, stop))]
        if prometheus:
            samplers.append(asyncio.create_task(read_metrics_until(prometheus, app, run, stop)))
        try:
            await asyncio.sleep(args.idle)
            logger.info("load: %d clients, uploads and searches, for %.0fs", args.clients,
                        args.load)  # fmt: skip
            await drive_load(url, photos, args.clients, args.load, run)
            cool_s = max(MIN_COOL_S, max(sc.settle_s for sc in scaling.values()) + COOL_MARGIN_S)
            cool_s = min(cool_s, args.max_cool) if args.max_cool else cool_s
            logger.info("load off after %.0fs; sampling until the autoscaled deployments are "
                        "at min_replicas (at most %.0fs)", run.load_end - run.load_start,
                        cool_s)  # fmt: skip
            began = time.monotonic()
            while time.monotonic() - began < cool_s:
                await asyncio.sleep(SAMPLE_EVERY_S)
                latest = next((s for s in reversed(run.samples) if s.replicas), None)
                if (time.monotonic() - began >= MIN_COOL_S and latest is not None
                        and latest.t > run.load_end and latest.replicas is not None
                        and at_rest(latest.replicas, scaling)):  # fmt: skip
                    break
            else:
                logger.warning("not back at min_replicas within %.0fs of the load", cool_s)
        finally:
            stop.set()
            await asyncio.gather(*samplers)
    return run


# -- report -------------------------------------------------------------------------------------
def relative(run: Run) -> Run:
    """The run with every time in seconds from the load's start."""
    t0 = run.load_start
    return Run(
        samples=[Sample(s.t - t0, s.replicas, s.error) for s in run.samples],
        metrics=[Metrics(m.t - t0, m.values) for m in run.metrics],
        done=[Done(d.t - t0, d.kind, d.status, d.latency_s) for d in run.done],
        load_start=0.0,
        load_end=run.load_end - t0,
        uploads_left_out=run.uploads_left_out,
    )


def report(run: Run, app: str, scaling: dict[str, Scaling], args: argparse.Namespace,
           photo_bytes: float) -> dict[str, Any]:  # fmt: skip
    rel = relative(run)
    samples, done, load = rel.samples, rel.done, (rel.load_start, rel.load_end)
    names = list(scaling)
    watched = [n for n, sc in scaling.items() if sc.autoscaled]
    rows = windows(samples, done, load, metrics=rel.metrics)
    summary = scaling_summary(samples, scaling, load[1], rel.metrics)
    failed_reads = sum(1 for s in samples if s.replicas is None)
    kinds = {k: sum(1 for d in done if d.kind == k and d.status == "200")
             for k in ("upload", "search")}  # fmt: skip
    statuses: dict[str, int] = {}
    for d in done:
        statuses[d.status] = statuses.get(d.status, 0) + 1
    logger.info("")
    logger.info("autoscaling under load: %d clients (every other request an upload of a new "
                "%s photo, %.0f kB mean; the others searches), %.0fs; replicas RUNNING read "
                "once a second from %s (%d samples, %d reads failed)", args.clients, args.size,
                photo_bytes / 1000, load[1], STATUS_PATH, len(samples), failed_reads)  # fmt: skip
    logger.info("answers: %s; 200s: %d uploads, %d searches%s", statuses, kinds["upload"],
                kinds["search"], f"; {run.uploads_left_out} uploads became searches (photo "
                "pool used up)" if run.uploads_left_out else "")  # fmt: skip
    logger.info("machine: %d CPUs, load average now %s", os.cpu_count() or 0,
                " ".join(f"{v:.2f}" for v in os.getloadavg()))  # fmt: skip
    for name, sc in scaling.items():
        if sc.autoscaled:
            logger.info("%s: replicas %d..%d, target_ongoing_requests %s, upscale_delay_s %s, "
                        "downscale_delay_s %s, look_back_period_s %s", name, sc.min_replicas,
                        sc.max_replicas, fmt(sc.target_ongoing_requests, 0), sc.upscale_delay_s,
                        sc.downscale_delay_s, sc.look_back_period_s)  # fmt: skip
    logger.info("replicas RUNNING per deployment (1-2: changed within the window); <name> n: "
                "the most requests Serve's autoscaler counted for it (its input, averaged "
                "over look_back_period_s; %d reads of %s)", len(rel.metrics),
                "its Prometheus metrics")  # fmt: skip
    for line in table(rows, names, watched):
        logger.info("%s", line)
    logger.info("")
    for line in figure(rows, names):
        logger.info("%s", line)
    logger.info("")
    for name, s in summary.items():
        logger.info("%s: peak %s replicas; at max (%d) from t=%s s; back at min (%d) at t=%s s "
                    "(%s s after the load); the autoscaler counted at most %s requests "
                    "(target_ongoing_requests %s per replica)", name, s["peak"],
                    s["max_replicas"], fmt(s["first_at_max_s"], 0), s["min_replicas"],
                    fmt(s["back_at_min_s"], 0), fmt(s["back_after_load_s"], 0),
                    fmt(s["most_counted_requests"], 1),
                    fmt(s["target_ongoing_requests"], 0))  # fmt: skip
        if s["first_at_max_s"] is None:
            logger.warning("%s did not reach max_replicas: Serve adds a replica only while the "
                           "requests it counts (averaged over look_back_period_s) exceed "
                           "target_ongoing_requests x replicas", name)  # fmt: skip
    return {
        "settings": {"clients": args.clients, "load_s": args.load, "size": args.size,
                     "photos": args.photos, "mean_photo_bytes": photo_bytes,
                     "search_limit": SEARCH_LIMIT, "application": app, "overrides": args.set,
                     "scaling": {n: asdict(sc) for n, sc in scaling.items()},
                     "cpu_count": os.cpu_count()},
        "load": {"start_s": load[0], "end_s": load[1], "statuses": statuses,
                 "uploads_became_searches": run.uploads_left_out},
        "summary": summary,
        "windows": [asdict(w) for w in rows],
        "autoscaler_metrics": [{"t": round(m.t, 3), "values": m.values} for m in rel.metrics],
        "samples": [{"t": round(s.t, 3), "error": s.error,
                     "replicas": None if s.replicas is None else
                     {n: asdict(r) for n, r in s.replicas.items()}} for s in samples],
        "answers": [{"t": round(d.t, 3), "kind": d.kind, "status": d.status,
                     "latency_s": round(d.latency_s, 4)} for d in done],
    }  # fmt: skip


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients during the load")
    ap.add_argument("--load", type=float, default=90.0, help="seconds of load")
    ap.add_argument("--size", default="1024x768", help="WxH of the photos")
    ap.add_argument("--photos", type=int, default=1500,
                    help="distinct photos made for uploads (also the search queries)")  # fmt: skip
    ap.add_argument("--idle", type=float, default=IDLE_BEFORE_S, help="seconds idle before")
    ap.add_argument("--max-cool", type=float, default=0.0,
                    help="cap on the wait for min_replicas after the load (0: from "
                         "serve_config.yaml's delays)")  # fmt: skip
    ap.add_argument("--out", type=Path, help="write the samples and the summary here as JSON")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="DEPLOYMENT.KEY=VALUE",
        help="run a private copy of serve_config.yaml with this changed, e.g. "
        "Embedder.autoscaling_config.target_ongoing_requests=8 (repeatable)",
    )
    ap.add_argument(
        "--short",
        action="store_true",
        help=f"a quick end-to-end check: {SHORT} (overrides those options)",
    )
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to start")
    ap.add_argument("--keep-logs", action="store_true", help="keep the service's work folder")
    args = ap.parse_args(argv)
    if args.short:
        for key, value in SHORT.items():
            setattr(args, key, value)
    if args.clients < 1 or args.photos < 1 or args.load <= 0:
        ap.error("--clients and --photos must be at least 1, --load above 0")
    return args


def start_service(workdir: Path, serve_doc: dict[str, Any] | None) -> processes.Server:
    """bench.compare's start_ours; with `serve_doc` (--set), on that serve config instead."""
    if serve_doc is None:
        return start_ours(workdir)
    config = workdir / "serve_config.yaml"
    config.write_text(yaml.safe_dump(serve_doc, sort_keys=False), encoding="utf-8")
    return start_ours(workdir, ["--serve-config", str(config)])


def run_service(app: str, scaling: dict[str, Scaling], photos: list[bytes],
                warm_photos: list[bytes], serve_doc: dict[str, Any] | None,
                args: argparse.Namespace) -> Run:  # fmt: skip
    # Short and under /tmp: Ray's unix socket paths below it must stay under 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="ise-as-", dir="/tmp"))
    server = start_service(workdir, serve_doc)
    began = time.monotonic()
    try:
        processes.wait_ready(server, "/readyz", args.ready_timeout)
        log = server.log_tail(chars=1_000_000)
        dash, prometheus = dashboard_url(log), metrics_url(log)
        logger.info("ready in %.0fs at %s, dashboard %s", time.monotonic() - began, server.url,
                    dash)  # fmt: skip
        asyncio.run(warm_up(server.url, warm_photos))
        return asyncio.run(experiment(server.url, dash, prometheus, app, scaling, photos, args))
    except BaseException:
        logger.error("the run failed; the end of the service's log:\n%s", server.log_tail())
        raise
    finally:
        with SIGNALS.uninterrupted():
            processes.stop(server)
        if args.keep_logs:
            logger.info("service log: %s", server.log)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def mean_bytes(photos: Iterable[bytes]) -> float:
    sizes = [len(p) for p in photos]
    return float(np.mean(sizes)) if sizes else 0.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    SIGNALS.install()
    doc = yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8"))
    try:
        serve_doc = apply_overrides(doc, args.set) if args.set else None
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    app, scaling = read_scaling(serve_doc or doc)
    if serve_doc:
        logger.info("a private copy of %s with %s", SERVE_CONFIG.name, ", ".join(args.set))
    if not any(sc.autoscaled for sc in scaling.values()):
        logger.error("no deployment in %s autoscales", SERVE_CONFIG.name)
        return 2
    # Every photo is made before the service starts: making them takes CPU too.
    began = time.monotonic()
    maker = PhotoMaker()
    size = parse_sizes(args.size)[0]
    warm_photos = maker.make(8, size)
    photos = maker.make(args.photos, size)
    logger.info("%d photos made in %.0fs", len(photos) + len(warm_photos),
                time.monotonic() - began)  # fmt: skip
    try:
        run = run_service(app, scaling, photos, warm_photos, serve_doc, args)
    except KeyboardInterrupt:
        logger.error("interrupted; the service is stopped")
        return 130
    out = report(run, app, scaling, args, mean_bytes(photos))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
