"""The Indexer deployment: owns the store clients; every write follows IndexService's protocol."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from ray import serve

from deployments import metrics
from deployments.coalescing import Coalescer
from deployments.hops import Call, run_many
from deployments.replica_port import listen_on_node_address
from image_search.config import settings_from_json
from image_search.duplicates import DuplicatePage, DuplicateQuery
from image_search.embedding import EmbeddedUpload, Embedding
from image_search.errors import SearchEngineError, StoreUnavailable
from image_search.imaging import ImageFacts
from image_search.indexing import GlobalQuery, Hit, IndexService, IngestItem, SearchPage
from image_search.planning import Plan, PlanItem
from image_search.records import ImageRecord, Upload
from image_search.stores.base import FLUSH_CHECK_S, TagCount

logger = logging.getLogger("ray.serve")
T = TypeVar("T")
# Single uploads, and untagged searches, that arrive while one batch of them runs go together
# as the next, up to these many (deployments/coalescing.py): an idle call runs alone at once.
# 16: the concurrent clients one replica is sized for (max_ongoing_requests leaves room for
# batch uploads and reads beside them); a write's or a search's store calls are then shared.
INDEX_BATCH = 16
SEARCH_BATCH = 16


@dataclass(frozen=True)
class _Write:
    """One single upload waiting to be written with the others (Indexer.index)."""

    upload: Upload
    data: bytes
    embedded: EmbeddedUpload


@serve.deployment
class Indexer:
    def __init__(self, settings_json: str) -> None:
        listen_on_node_address()
        self.svc = IndexService.from_settings(settings_from_json(settings_json))
        self._ready = False
        self._start_batching()
        try:
            self._ensure_ready()
        except StoreUnavailable as exc:
            # Start anyway: /readyz reports the store, and calls retry until it is back.
            logger.warning("stores not ready at start: %s", exc.message)
        threading.Thread(target=self._flush_loop, daemon=True, name="vector-flush").start()

    def _start_batching(self) -> None:
        self._writes = Coalescer(self._write_batch, INDEX_BATCH, "index")
        self._searches = Coalescer(self._search_batch, SEARCH_BATCH, "search")

    def _ensure_ready(self) -> None:
        if not self._ready:
            self.svc.ensure_stores()  # raises ConfigError on a model/collection mismatch
            self._ready = True

    def _flush_loop(self) -> None:
        failing = False
        while True:  # a daemon thread: ends with the replica
            time.sleep(FLUSH_CHECK_S)
            failing = self._flush_due(failing)

    def _flush_due(self, failing: bool) -> bool:
        """One check of the vector indexes' flush rules; returns whether it failed. An outage is
        logged once when it starts and once when it ends, not at every check (ten a second)."""
        try:
            self.svc.stores.vectors.flush_if_due()
            regions = self.svc.region_index()
            if regions is not None:  # its tail of parts, too
                regions.flush_if_due()
        except SearchEngineError as exc:
            if not failing:
                logger.warning("periodic flush failing: %s", exc.message)
            return True
        if failing:
            logger.info("periodic flush works again")
        return False

    def _item(self, upload: Upload, data: bytes, facts: ImageFacts,
              embedding: Embedding | None) -> IngestItem:  # fmt: skip
        # A thumbnail of another size (a Decoder on other settings) is not the one we serve.
        same_size = facts.thumbnail_size == self.svc.thumbnail_size
        return IngestItem(
            upload.new_image(facts.width, facts.height), data, self._vector(embedding),
            facts.thumbnail if same_size else b"",
            None if embedding is None else embedding.regions,
        )  # fmt: skip

    def _vector(self, embedding: Embedding | None) -> np.ndarray | None:
        # None: the content is known and already has its vector.
        return None if embedding is None else self.svc.accept(embedding)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        def call() -> T:
            self._ensure_ready()
            return fn(*args)

        return await asyncio.to_thread(call)

    async def readiness(self) -> dict[str, str]:
        return await asyncio.to_thread(self.svc.readiness)

    async def plan(self, items: list[PlanItem]) -> list[Plan]:
        return await self._run(self.svc.plan, items)

    async def index(
        self, upload: Upload, data: bytes, embedded: EmbeddedUpload
    ) -> ImageRecord | SearchEngineError:
        """A single upload, planned and written here in the one call the ingress makes.

        Batched: uploads arriving while a write runs go together as the next one -- one plan
        query, one pin transaction and one vector upsert for all of them. Each caller gets its
        own record or error (an error is returned, not raised, so it stays that caller's).
        """
        return await self._writes(_Write(upload, data, embedded))

    async def _write_batch(self, writes: list[_Write]) -> list[ImageRecord | SearchEngineError]:
        metrics.observe_indexer_batch("index", len(writes))
        items = [self._item(w.upload, w.data, w.embedded.facts, w.embedded.embedding)
                 for w in writes]  # fmt: skip
        return await self._run(self.svc.index_many, items)

    async def many(self, calls: list[Call]) -> list[Any]:
        """Several of the Ingress's index and search calls in one hop (deployments/hops.py);
        they then go into the writes and searches coalesced above like any others."""
        return await run_many(self, ("index", "search", "search_stored"), calls)

    async def ingest_many(
        self,
        uploads: Sequence[Upload],
        datas: Sequence[bytes],
        facts: Sequence[ImageFacts],
        embeddings: Sequence[Embedding | None],
    ) -> list[ImageRecord | SearchEngineError]:
        """A batch upload's write; an embedding is None where the content is already indexed."""
        items = [
            self._item(u, b, f, e)
            for u, b, f, e in zip(uploads, datas, facts, embeddings, strict=True)
        ]
        return await self._run(self.svc.ingest_many, items)

    async def search(
        self,
        embedding: Embedding,
        offset: int,
        limit: int,
        threshold: float | None,
        tags: tuple[str, ...] = (),
        mode: str = "global",
    ) -> list[Hit]:
        vector = self.svc.accept(embedding)
        if mode == "regions":
            return await self._run(self.svc.search_regions, vector, embedding.regions, offset,
                                   limit, threshold, tags)  # fmt: skip
        if tags:
            return await self._run(self.svc.search, vector, offset, limit, threshold, tags)
        page = SearchPage(offset, limit, threshold)
        return self._page(await self._searches(GlobalQuery(page, vector=vector)))

    async def search_stored(
        self,
        meta_uuid: str,
        offset: int,
        limit: int,
        threshold: float | None,
        tags: tuple[str, ...] = (),
    ) -> list[Hit]:
        # One call, not the stored vector then search: each hop through Serve costs the
        # Ingress and this replica a few ms of CPU (bench.hops), and here it buys nothing.
        if tags:
            return await self._run(self.svc.search_stored, meta_uuid, offset, limit, threshold,
                                   tags)  # fmt: skip
        page = SearchPage(offset, limit, threshold)
        return self._page(await self._searches(GlobalQuery(page, meta_uuid=meta_uuid)))

    async def _search_batch(
        self, queries: list[GlobalQuery]
    ) -> list[list[Hit] | SearchEngineError]:
        """Untagged searches arriving while one runs go together as the next: one Milvus
        request for all their vectors and one row query (IndexService.search_global). A
        Milvus request's own cost is most of a search's at our sizes, and it is shared."""
        metrics.observe_indexer_batch("search", len(queries))
        return await self._run(self.svc.search_global, queries)

    @staticmethod
    def _page(result: list[Hit] | SearchEngineError) -> list[Hit]:
        if isinstance(result, SearchEngineError):
            raise result  # this caller's own error (an unknown meta_uuid), not the batch's
        return result

    async def has_regions(self) -> bool:
        """Whether the collection has region vectors (uploads then bring their views)."""
        return await self._run(lambda: self.svc.region_index() is not None)

    async def get(self, meta_uuid: str) -> ImageRecord:
        return await self._run(self.svc.get, meta_uuid)

    async def page(
        self, offset: int, limit: int, tags: tuple[str, ...] = (), before: int | None = None
    ) -> tuple[list[ImageRecord], int]:
        return await self._run(self.svc.page, offset, limit, tags, before)

    async def counts(self, tags: tuple[str, ...] = ()) -> tuple[int, int]:
        return await self._run(self.svc.counts, tags)

    async def tag_counts(self, limit: int) -> list[TagCount]:
        return await self._run(self.svc.tag_counts, limit)

    async def delete(self, meta_uuid: str) -> ImageRecord:
        return await self._run(self.svc.delete, meta_uuid)

    async def delete_all(self) -> int:
        return await self._run(self.svc.delete_all)

    async def object_bytes(self, key: str) -> bytes:
        return await self._run(self.svc.object_bytes, key)

    async def presigned_url(self, key: str) -> str | None:
        return await self._run(self.svc.stores.objects.presigned_url, key)

    async def thumbnail(self, meta_uuid: str) -> bytes:
        return await self._run(self.svc.thumbnail, meta_uuid)

    async def duplicates(self, query: DuplicateQuery) -> DuplicatePage:
        return await self._run(self.svc.duplicates, query)
