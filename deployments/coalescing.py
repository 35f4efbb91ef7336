"""Calls coalesced into batches without waiting for company: the Indexer's writes and searches,
and the Ingress's calls to the other deployments (deployments/hops.py).

serve.batch forms each batch the moment its wait ends and only then queues it behind the one
running, so with no wait (an idle request must not wait) its batches are of one almost
always: measured, 16 clients' searches still made one Milvus request each. Here a call that
finds nothing running runs at once, alone, and the calls that arrive while a batch runs go
together as the next: batches grow with the load, and nobody waits for them to fill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """`await coalescer(item)`: `run` is called with lists of items, up to `lanes` lists at a
    time, and returns one result per item, in order. An exception from `run` is every caller's
    in that batch; the next batch runs regardless. A call that finds a lane free goes at once;
    the calls that find every lane busy go together in the next free one."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        max_size: int,
        name: str,
        lanes: int = 1,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self._run = run
        self.max_size = max_size
        self.set_lanes(lanes)
        self.name = name
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        # Kept here so that a running task cannot be collected mid-run.
        self._workers: set[asyncio.Task[None]] = set()

    def set_lanes(self, lanes: int) -> None:
        """Batches run at once from now on (a running one is never stopped for it)."""
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self.lanes = lanes

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        # Counted by done(), not by membership: a lane that has just ended stays in the set
        # until its done-callback runs, and a call that counted it would wait with no lane.
        if sum(not w.done() for w in self._workers) < self.lanes:
            # Started, not awaited: the calls made in this turn of the loop join its first
            # batch (a lane started after it may then find nothing left, and end).
            task = asyncio.create_task(self._drain(), name=f"coalesce-{self.name}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_size]
                del self._pending[: self.max_size]
                live = [(item, f) for item, f in batch if not f.cancelled()]
                if live:
                    await self._one(live)
        finally:
            me = asyncio.current_task()
            if not any(w is not me and not w.done() for w in self._workers):
                # Left with calls waiting only when the lanes were cancelled (the replica
                # stopping): nobody would run these, so their callers are told rather than
                # left waiting.
                for _, future in self._pending:
                    future.cancel()
                self._pending.clear()

    async def _one(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} items")
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its caller may have gone (a cancelled request)
                future.set_result(result)
