"""Closed-loop load: `clients` concurrent clients post files until a list is done.

Every answer is counted by status. A 503 with Retry-After (our service at capacity) is honoured
and retried a bounded number of times, and counted; a request's latency is from its first try
to its final answer, waits included, because that is what its client lived through.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

# Bounds: nothing waits forever, and a server at capacity is not hammered.
MAX_RETRIES = 8
MAX_RETRY_AFTER_S = 10.0
REQUEST_TIMEOUT_S = 180.0

Request = tuple[dict[str, Any], dict[str, str]]  # (files, form data) of one POST


@dataclass
class Outcome:
    """What one phase (N requests at some concurrency) measured."""

    requests: int
    wall_s: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    retries_503: int = 0
    latencies_s: list[float] = field(default_factory=list)  # of the 200s only

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def failed(self) -> int:
        return self.requests - self.ok


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("Retry-After", "1")), MAX_RETRY_AFTER_S)
    except ValueError:
        return 1.0


async def _one(client: httpx.AsyncClient, path: str, req: Request, out: Outcome) -> Any:
    files, data = req
    began = time.perf_counter()
    for attempt in range(MAX_RETRIES + 1):
        try:
            r = await client.post(path, files=files, data=data)
        except httpx.HTTPError as exc:
            out.statuses[type(exc).__name__] += 1
            return None
        if r.status_code == 503 and "Retry-After" in r.headers and attempt < MAX_RETRIES:
            out.retries_503 += 1
            await asyncio.sleep(_retry_after(r))
            continue
        out.statuses[str(r.status_code)] += 1
        if r.status_code != 200:
            return None
        out.latencies_s.append(time.perf_counter() - began)
        return r.json()
    return None  # not reached: the last attempt always returns


async def drive(
    base_url: str,
    path: str,
    requests: list[Request],
    clients: int,
    deadline_s: float,
    on_body: Callable[[int, Any], None] | None = None,
) -> Outcome:
    """POST every request to `path` with `clients` at a time; stop starting new ones at the
    deadline (the ones never sent are counted as "not sent")."""
    out = Outcome(len(requests))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S,
                                 limits=limits) as client:  # fmt: skip
        began = time.perf_counter()
        stop_at = began + deadline_s

        async def worker() -> None:
            while not queue.empty() and time.perf_counter() < stop_at:
                i = queue.get_nowait()
                body = await _one(client, path, requests[i], out)
                if body is not None and on_body is not None:
                    on_body(i, body)

        await asyncio.gather(*(worker() for _ in range(clients)))
        out.wall_s = time.perf_counter() - began
    if queue.qsize():
        out.statuses["not sent"] += queue.qsize()
    return out
