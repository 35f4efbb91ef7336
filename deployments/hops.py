"""The Ingress's calls to the other deployments on an upload's or a search's path, sent
together under load: one hop carries several requests' calls.

A call between replicas costs both processes CPU of its own, apart from what it carries:
between two replicas on one node, 4.2 ms an empty call (2.2 the caller's, 2.0 the callee's)
and 5.5 ms one with the model's pixels, against 0.55-0.71 ms a call when eight go as one
(`python -m bench.hops`, 2026-12-07). An upload makes three such calls and a search two;
sent together, a 1600x1200 upload at 16 clients cost 34-37 ms of CPU instead of 51-56
(README, "How it works"). A call that finds `lanes` calls to the same deployment under way
waits for the next lane and goes with the others waiting, as one call to the replica's
`many`, which runs each as if it had come alone. A call that finds a lane free goes at once,
alone: nobody waits for company (deployments/coalescing.py).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from deployments import metrics
from deployments.coalescing import Coalescer
from image_search.errors import SearchEngineError

logger = logging.getLogger("ray.serve")

# One call in a batch: the method's name and its arguments.
Call = tuple[str, tuple[Any, ...]]
# Calls per hop at most: the Ingress admits limits.max_inflight (16) heavy requests at once,
# so no more than that can be waiting on one hop with the defaults.
MAX_CALLS = 16
# Calls under way at once to one deployment before the next ones wait to go together, unless
# serve_config.yaml's Ingress user_config says otherwise (hop_lanes, where it says why 2).
LANES = 2


@dataclass(frozen=True)
class Raised:
    """A call in a batch that raised: its error, for its own caller alone."""

    error: SearchEngineError


async def run_many(target: object, allowed: Collection[str], calls: list[Call]) -> list[Any]:
    """The replica's side of a batched hop: every call run at once, as if each had come
    alone (a plain `def` in a thread, as Serve would); each gets its own result or Raised."""

    async def one(method: str, args: tuple[Any, ...]) -> Any:
        if method not in allowed:
            raise SearchEngineError(f"{type(target).__name__}.{method} is not batched")
        fn = getattr(target, method)
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        return await asyncio.to_thread(fn, *args)

    outcomes = await asyncio.gather(*(one(m, a) for m, a in calls), return_exceptions=True)
    return [_raised(target, out) if isinstance(out, BaseException) else out for out in outcomes]


def _raised(target: object, exc: BaseException) -> Raised:
    if isinstance(exc, SearchEngineError):
        return Raised(exc)
    if not isinstance(exc, Exception):  # cancelled, or the process stopping
        raise exc
    # Anything else would be a 500 had the call come alone; it stays one, logged here where
    # its traceback is, and sent as a domain error that always pickles.
    logger.error("unexpected error in %s", type(target).__name__, exc_info=exc)
    return Raised(SearchEngineError(f"internal error: {type(exc).__name__}"))


class BatchedHandle:
    """A deployment's handle for the calls of the hot path: `await hop.call(method, *args)`.

    `bound` wraps each call a lane sends (IngressFlows gives the graph's timeout): a call that
    never answers -- its replica's node lost mid-call -- must not hold its lane, and every
    call waiting behind it, for ever.
    """

    def __init__(
        self,
        handle: Any,
        name: str,
        bound: Callable[[Awaitable[list[Any]]], Awaitable[list[Any]]] | None = None,
        max_calls: int = MAX_CALLS,
        lanes: int = LANES,
    ) -> None:
        self._handle = handle
        self.name = name
        self._bound = bound
        self._calls: Coalescer[Call, Any] = Coalescer(self._send, max_calls, f"hop-{name}",
                                                      lanes)  # fmt: skip

    def set_lanes(self, lanes: int) -> None:
        self._calls.set_lanes(lanes)

    async def call(self, method: str, *args: Any) -> Any:
        outcome = await self._calls((method, args))
        if isinstance(outcome, Raised):
            raise outcome.error
        return outcome

    async def _send(self, calls: list[Call]) -> list[Any]:
        metrics.observe_hop_batch(self.name, len(calls))
        sent = self._send_now(calls)
        return await (self._bound(sent) if self._bound else sent)

    async def _send_now(self, calls: list[Call]) -> list[Any]:
        if len(calls) == 1:
            # Alone: the method itself, so an idle request pays nothing for batching (and an
            # error reaches its caller as it always has).
            method, args = calls[0]
            return [await getattr(self._handle, method).remote(*args)]
        out: list[Any] = await self._handle.many.remote(calls)
        return out
