"""Admission: what a request may cost, decided before its body is read.

An ASGI middleware (outside FastAPI, so it sees the raw byte stream), installed twice:
in Serve's HTTP proxy (body limits only; `proxy_middlewares`), because the proxy otherwise
reads a whole body into memory whatever the app answers, and in each Ingress app (limits and
the gate). What it does:
- each route has a body budget; a body over it is refused with 413 as soon as the declared
  length or the bytes read so far (chunked bodies included) pass it, not after reading it all;
- a client that stops sending mid-body is cut off with 408 after `body_idle_timeout_s`;
- heavy routes (uploads, searches, stored files) pass a gate of `max_inflight` slots with a
  bounded wait; a full gate answers 503 + Retry-After at once. Light routes (health, lists,
  counts) skip the gate, so /healthz and /readyz never queue behind uploads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments import metrics
from deployments.envelope import error_body
from image_search.config import LimitSettings, load_settings
from image_search.errors import ImageTooLarge, Overloaded, RequestTimeout, SearchEngineError

logger = logging.getLogger("ray.serve")

# Room for a multipart envelope and its text fields around one file (tags are <= 2 KiB).
FORM_OVERHEAD = 64 * 1024
# Routes without an upload carry at most a small form or nothing at all.
SMALL_BODY = 64 * 1024
# Matched as suffixes: under a route prefix (or in the proxy, which sees every app's full
# path) the routes end the same way.
_UPLOADS = ("/meta/image/file", "/sample/file")
_BATCH = "/meta/image/files"


@dataclass(frozen=True)
class Budget:
    max_body: int
    heavy: bool  # passes the gate: it decodes, embeds, searches or streams stored bytes


def budget_for(method: str, path: str, limits: LimitSettings) -> Budget:
    if method == "POST" and path.endswith(_BATCH):
        return Budget(limits.max_batch_bytes, heavy=True)
    if method == "POST" and path.endswith(_UPLOADS):
        return Budget(limits.max_upload_bytes + FORM_OVERHEAD, heavy=True)
    heavy_read = method == "GET" and (
        "/files/" in path or "/sample/meta/" in path or path.endswith("/thumbnail")
    )
    return Budget(SMALL_BODY, heavy=heavy_read)


class Gate:
    """At most `slots` requests at once; at most `max_waiting` wait, each for `timeout_s`."""

    def __init__(self, slots: int, max_waiting: int, timeout_s: float, retry_after_s: int):
        self._free = asyncio.Semaphore(slots)
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.waiting = 0

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self._free.locked() and self.waiting >= self.max_waiting:
            raise Overloaded("the service is at capacity; retry shortly", self.retry_after_s)
        self.waiting += 1
        try:
            await asyncio.wait_for(self._free.acquire(), self.timeout_s)
        except TimeoutError:
            raise Overloaded(
                f"waited {self.timeout_s:g} s for capacity; retry shortly", self.retry_after_s
            ) from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._free.release()


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, limits: LimitSettings, gated: bool = True) -> None:
        self.app = app
        self.limits = limits
        self.gated = gated
        self.gate = Gate(
            limits.max_inflight, limits.max_waiting, limits.queue_timeout_s, limits.retry_after_s
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        budget = budget_for(scope["method"], scope.get("path", ""), self.limits)
        declared = _declared_length(scope)
        if declared is not None and declared > budget.max_body:
            metrics.count_refused("too_large")
            await _answer(scope, receive, send, _too_large(declared, budget.max_body))
            return
        if not (budget.heavy and self.gated):
            await self._bounded(scope, receive, send, budget.max_body)
            return
        try:
            async with self.gate.admit():
                await self._bounded(scope, receive, send, budget.max_body)
        except Overloaded as exc:  # raised by admit() only: the app answers its own errors
            metrics.count_refused("overloaded")
            await _answer(scope, receive, send, exc)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app with a receive that stops at `limit` bytes or a silent client."""
        received = 0
        body_done = False
        refused: SearchEngineError | None = None
        app_started = False

        async def limited_receive() -> Message:
            nonlocal received, body_done, refused
            if refused is not None:
                return {"type": "http.disconnect"}
            if body_done:  # after the body, receive only waits for a disconnect: no timeout
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_idle_timeout_s)
            except TimeoutError:
                refused = RequestTimeout(
                    f"no request body bytes for {self.limits.body_idle_timeout_s:g} s"
                )
                metrics.count_refused("slow_body")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    refused = _too_large(received, limit, read=True)
                    metrics.count_refused("too_large")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal app_started
            if refused is not None and not app_started:
                return  # the app's answer to the cut-off body is replaced by ours below
            if message["type"] == "http.response.start":
                app_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if refused is None:
                raise
        if refused is not None and not app_started:
            await _answer(scope, receive, send, refused)


def _too_large(size: int, limit: int, read: bool = False) -> ImageTooLarge:
    what = f"over {size} bytes read" if read else f"{size} bytes"
    return ImageTooLarge(f"request body is {what}; this route takes at most {limit}")


async def _answer(scope: Scope, receive: Receive, send: Send, err: SearchEngineError) -> None:
    response: Any = error_body(err)
    await response(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    """For Serve's HTTP proxy: the body limits of the settings the cluster was started with.

    The proxy is shared by every app on the cluster and holds no gate: each Ingress has its
    own, sized for its replica. An app configured with larger limits than these is still
    bounded by them.
    """
    limits = load_settings().limits
    logger.info("proxy body limits: upload %d B, batch %d B", limits.max_upload_bytes,
                limits.max_batch_bytes)  # fmt: skip
    return [Middleware(AdmissionMiddleware, limits=limits, gated=False)]
