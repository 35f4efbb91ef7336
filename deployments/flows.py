"""The ingress's flows: each request's path through the graph, over the DeploymentHandles.

Each hop's result is awaited here and then passed to the next call. Over Serve's gRPC
transport (deployments.cluster.SERVE_TRANSPORT_ENV says why that one) a pending result passed
into a call is fetched by the caller and sent on all the same, and Serve's own resolving of
it cost more than the await: passing them on gave 5% fewer uploads/s at 1 and at 16 clients,
alternated four times with bench.compare (README, "How it works").
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from deployments.hops import BatchedHandle
from image_search.config import Settings
from image_search.duplicates import DuplicatePage, DuplicateQuery, check_threshold
from image_search.embedding import EmbeddedUpload, Embedding
from image_search.errors import BadRequest, Conflict, ModelMismatch, Overloaded, SearchEngineError
from image_search.imaging import ImageFacts, content_info, sniff
from image_search.indexing import Hit
from image_search.planning import PlanItem
from image_search.records import ImageRecord, Upload
from image_search.stores.base import TagCount

T = TypeVar("T")
Outcome = ImageRecord | SearchEngineError
# A rolling model switch updates the Embedder and the Indexer separately; for a few seconds
# one of them runs the other model. Searches wait that out, this long at most.
SWITCH_RETRIES = 40
SWITCH_WAIT_S = 0.5
# How long the ingress trusts what the Indexer said about the collection having region
# vectors (uploads bring their views only then); a switch to a collection with them is
# ridden out by the Indexer refusing an upload without them with a retryable 503.
REGIONS_TTL_S = 5.0
# Uploads under way at one Ingress replica, this one included, up to which an upload's bytes
# go straight to the Embedder, which decodes them as it does a query's; the ones beyond go
# through the Decoder. serve_config.yaml's Ingress user_config says otherwise
# (direct_decode_max, where it says why 4 and what it measured).
DIRECT_DECODE_MAX = 4
NO_REGIONS = (
    "this collection has no region vectors: search with mode=global, or build them with "
    "`python -m pipelines.reembed --regions --collection NEW` (README, Region search)"
)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: Ray chains replica exceptions (RayTaskError) across hops."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__


def find_domain_error(exc: BaseException) -> SearchEngineError | None:
    """Our own error inside whatever Ray wrapped around it."""
    return next((c for c in causes(exc) if isinstance(c, SearchEngineError)), None)


async def riding_out_model_switch(call: Callable[[], Awaitable[T]]) -> T:
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if attempt >= SWITCH_RETRIES or not isinstance(find_domain_error(exc), ModelMismatch):
                raise
        attempt += 1
        await asyncio.sleep(SWITCH_WAIT_S)


async def bounded(call: Awaitable[T], timeout_s: float, retry_after_s: int, shield: bool) -> T:
    """`call`'s answer, or after `timeout_s` a retryable 503.

    A call under way on a replica whose node dies may never answer: tests/multinode caught
    an upload or search that was running on the lost worker still waiting 60 s later, long
    after Ray had declared the node dead. The client then gets an answer it can act on
    rather than the proxy's 408 minutes later. With `shield` (calls that write) the call goes
    on when the wait ends, whether by the timeout or by the client leaving, so a write under
    way finishes whole, never cut midway; a retry of the same upload finds it (200 or 409).
    """
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.wait_for(asyncio.shield(task) if shield else task, timeout_s)
    except TimeoutError:
        # Its late outcome is nobody's; take it, so asyncio does not log it as never retrieved.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise Overloaded(
            f"no answer from the service's workers in {timeout_s:g} s; retry shortly",
            retry_after_s,
        ) from None


class IngressFlows:
    """Every route's work: checks, then calls down the graph. Shaping is in responses.py."""

    def __init__(self, decoder: Any, embedder: Any, indexer: Any, settings: Settings) -> None:
        # DeploymentHandles in the service; stand-ins with the same methods in fast tests.
        self.decoder = decoder
        self.embedder = embedder
        self.indexer = indexer
        self.settings = settings
        # The hot path's calls, sent together under load (deployments/hops.py), each lane's
        # call bounded as a request's trip is, and shielded: a write under way finishes whole.
        lane_bound = functools.partial(self.bounded, shield=True)
        self.to_decoder = BatchedHandle(decoder, "decoder", lane_bound)
        self.to_embedder = BatchedHandle(embedder, "embedder", lane_bound)
        self.to_indexer = BatchedHandle(indexer, "indexer", lane_bound)
        self._has_regions = False
        self._regions_checked = -float("inf")
        self._uploads_in_flight = 0
        self.direct_decode_max = DIRECT_DECODE_MAX

    def set_direct_decode_max(self, uploads: int) -> None:
        """Uploads under way here up to which the Embedder decodes them (0: the Decoder
        always does)."""
        if uploads < 0:
            raise ValueError(f"direct_decode_max must be at least 0, not {uploads}")
        self.direct_decode_max = uploads

    def set_lanes(self, lanes: int) -> None:
        """Calls under way at once to each deployment before the next ones go together."""
        for hop in (self.to_decoder, self.to_embedder, self.to_indexer):
            hop.set_lanes(lanes)

    def bounded(self, call: Awaitable[T], shield: bool = False) -> Awaitable[T]:
        """One upload's or search's trip through the graph, bounded (see `bounded`)."""
        limits = self.settings.limits
        return bounded(call, limits.graph_timeout_s, limits.retry_after_s, shield)

    # -- checks ---------------------------------------------------------------------------
    def check_limit(self, offset: int, limit: int) -> None:
        cap = self.settings.limits.max_search_limit
        if offset + limit > cap:
            raise BadRequest(f"offset + limit must be at most {cap}")

    async def readiness(self) -> tuple[dict[str, str], dict[str, Any]]:
        """Each store's and the model's state, and what the Embedder says it runs (the model
        id, and for the model runtimes that choose one, the runtime, precision and why)."""
        checks: dict[str, str] = {}
        info: dict[str, Any] = {}
        try:
            checks.update(await self.indexer.readiness.remote())
        except Exception as exc:  # readiness must answer, whatever the replica's state
            checks["indexer"] = f"unavailable: {type(exc).__name__}"
        try:
            info = await self.embedder.info.remote()
            checks["model"] = "ok" if info["dim"] > 0 else "not loaded"
        except Exception as exc:
            checks["model"] = f"unavailable: {type(exc).__name__}"
        return checks, info

    async def collection_has_regions(self, fresh: bool = False) -> bool:
        now = time.monotonic()
        if fresh or now - self._regions_checked > REGIONS_TTL_S:
            self._has_regions = bool(await self.indexer.has_regions.remote())
            self._regions_checked = now
        return self._has_regions

    async def search_mode(self, mode: str | None) -> str:
        """A request's mode: as asked, else search.mode; auto = regions where the collection
        has region vectors. Regions asked of a collection without them: 409."""
        asked = mode or self.settings.search.mode
        if asked == "global":
            return "global"
        if await self.collection_has_regions(fresh=asked == "regions"):
            return "regions"
        if asked == "regions":
            raise Conflict(NO_REGIONS)
        return "global"

    # -- ingest ---------------------------------------------------------------------------
    async def index_one(
        self, data: bytes, file_name: str, meta_uuid: str | None, tags: tuple[str, ...] = ()
    ) -> ImageRecord:
        info = content_info(data)
        upload = Upload(info, meta_uuid or info.md5, file_name, tags)
        # No plan call first: the Indexer plans where it writes. A taken meta_uuid or known
        # content then costs a decode and a forward pass, which a new upload -- the common
        # case -- no longer pays for with a round trip before its decode can start.

        async def chain() -> ImageRecord | SearchEngineError:
            regions = await self.collection_has_regions()
            embedded: EmbeddedUpload
            if self._uploads_in_flight <= self.direct_decode_max:
                # Few uploads under way: the Embedder decodes this one itself, one hop fewer
                # and no pixels on any hop, as for a query. Past that its decode threads are
                # busy, and the Decoder's replicas take the decodes, so the Embedder's CPU
                # stays on the model and a cluster spreads them over the Decoders' nodes.
                embedded = await self.to_embedder.call("embed_upload_bytes", data, regions)
            else:
                decoded = await self.to_decoder.call("decode", data, True, regions)
                # The pixels go to the Embedder only; the Indexer gets the vector with the
                # decode's size and thumbnail (150 kB of pixels add 3-4 ms to a hop, bench.hops).
                embedded = await self.to_embedder.call("embed_upload", decoded)
            out: ImageRecord | SearchEngineError = await self.to_indexer.call(
                "index", upload, data, embedded
            )
            return out

        self._uploads_in_flight += 1
        try:
            rec = await self.bounded(chain(), shield=True)
        finally:
            self._uploads_in_flight -= 1
        if isinstance(rec, SearchEngineError):
            raise rec
        return rec

    async def index_many(self, files: Sequence[tuple[bytes, str]]) -> list[Outcome]:
        """Batch upload: one plan, then each file decoded and embedded on its own chain
        (the Embedder batches them), one batched write."""
        results: list[Outcome | None] = [None] * len(files)
        uploads = self._uploads(files, results)
        plans = await self.indexer.plan.remote(
            [PlanItem(u.meta_uuid, u.info.sha256) for u in uploads.values()]
        ) if uploads else []  # fmt: skip
        new: set[int] = set()
        for i, plan in zip(list(uploads), plans, strict=True):
            if not plan.writes:
                results[i] = Conflict(f"meta_uuid {uploads.pop(i).meta_uuid!r} already exists")
            elif plan.status == "new":
                new.add(i)
        made = await self._decode_and_embed({i: files[i][0] for i in uploads}, new, results)
        todo = [i for i in uploads if i in made]
        written = await self.indexer.ingest_many.remote(
            [uploads[i] for i in todo], [files[i][0] for i in todo],
            [made[i][0] for i in todo], [made[i][1] for i in todo],
        ) if todo else []  # fmt: skip
        for i, res in zip(todo, written, strict=True):
            results[i] = res
        return [r if r is not None else SearchEngineError("not processed") for r in results]

    @staticmethod
    def _uploads(
        files: Sequence[tuple[bytes, str]], results: list[Outcome | None]
    ) -> dict[int, Upload]:
        """Sniff and hash each file; the bad ones and repeats get their outcome right here."""
        out: dict[int, Upload] = {}
        seen: set[str] = set()
        for i, (data, name) in enumerate(files):
            try:
                info = content_info(data)
            except SearchEngineError as exc:
                results[i] = exc
                continue
            if info.md5 in seen:
                results[i] = Conflict(f"meta_uuid {info.md5!r} appears twice in this request")
                continue
            seen.add(info.md5)
            out[i] = Upload(info, info.md5, name)
        return out

    async def _decode_and_embed(
        self, datas: dict[int, bytes], new: set[int], results: list[Outcome | None]
    ) -> dict[int, tuple[ImageFacts, Embedding | None]]:
        """Each file's decode facts, and for new content its vector. As for a single upload,
        a decode's pixels pass through here to the Embedder and go no further; what the
        Embedder gives back is small. Content already indexed needs no vector, so its pixels
        never leave the Decoder."""
        regions = await self.collection_has_regions()

        async def embedded(data: bytes) -> EmbeddedUpload:
            decoded = await self.decoder.decode.remote(data, True, regions)
            out: EmbeddedUpload = await self.embedder.embed_upload.remote(decoded)
            return out

        calls = [embedded(d) if i in new else self.decoder.facts.remote(d)
                 for i, d in datas.items()]  # fmt: skip
        got = await asyncio.gather(*calls, return_exceptions=True)
        made: dict[int, tuple[ImageFacts, Embedding | None]] = {}
        for i, out in zip(datas, got, strict=True):
            if isinstance(out, BaseException):
                results[i] = find_domain_error(out) or SearchEngineError(str(out))
            elif isinstance(out, EmbeddedUpload):
                made[i] = (out.facts, out.embedding)
            else:
                made[i] = (out, None)
        return made

    # -- search ---------------------------------------------------------------------------
    async def search_bytes(
        self,
        data: bytes,
        offset: int,
        limit: int,
        threshold: float | None,
        tags: tuple[str, ...] = (),
        mode: str | None = None,
    ) -> list[Hit]:
        """mode: global | regions (None: search.mode); regions adds the query's cells."""
        self.check_limit(offset, limit)
        sniff(data)  # a 415/400 right here, without a trip through the graph
        resolved = await self.search_mode(mode)

        async def chain() -> list[Hit]:
            # Decoded by the Embedder: the query's bytes make one hop, its pixels none.
            vector = await self.to_embedder.call("embed_query", data, resolved == "regions")
            hits: list[Hit] = await self.to_indexer.call(
                "search", vector, offset, limit, threshold, tags, resolved
            )
            return hits

        return await riding_out_model_switch(lambda: self.bounded(chain()))

    async def search_stored(
        self,
        meta_uuid: str,
        offset: int,
        limit: int,
        threshold: float | None,
        tags: tuple[str, ...] = (),
        mode: str | None = None,
    ) -> list[Hit]:
        """Search with an image that is already stored: no upload, no embedding. In regions
        mode its cells are needed: its stored bytes go through search_bytes."""
        self.check_limit(offset, limit)
        if await self.search_mode(mode) == "regions":
            rec = await self.get(meta_uuid)
            data = await self.object_bytes(rec.file_path)
            return await self.search_bytes(data, offset, limit, threshold, tags, "regions")

        # The vector and the index are both the Indexer's: no model switch to ride out.
        hits: list[Hit] = await self.bounded(
            self.to_indexer.call("search_stored", meta_uuid, offset, limit, threshold, tags)
        )
        return hits

    # -- reads and deletes ----------------------------------------------------------------
    async def file_urls(self, records: Sequence[ImageRecord]) -> dict[str, str | None]:
        """Presigned URLs by file_path, when the store hands them out; empty otherwise."""
        if self.settings.stores.file_url_mode != "presigned" or not records:
            return {}
        urls = await asyncio.gather(
            *(self.indexer.presigned_url.remote(r.file_path) for r in records)
        )
        return {r.file_path: u for r, u in zip(records, urls, strict=True)}

    async def page(
        self, offset: int, limit: int, tags: tuple[str, ...] = (), before: int | None = None
    ) -> tuple[list[ImageRecord], int]:
        result: tuple[list[ImageRecord], int] = await self.indexer.page.remote(
            offset, limit, tags, before
        )
        return result

    async def counts(self, tags: tuple[str, ...] = ()) -> tuple[int, int]:
        result: tuple[int, int] = await self.indexer.counts.remote(tags)
        return result

    async def tag_counts(self, limit: int) -> list[TagCount]:
        result: list[TagCount] = await self.indexer.tag_counts.remote(limit)
        return result

    async def get(self, meta_uuid: str) -> ImageRecord:
        rec: ImageRecord = await self.indexer.get.remote(meta_uuid)
        return rec

    async def delete(self, meta_uuid: str) -> ImageRecord:
        rec: ImageRecord = await self.indexer.delete.remote(meta_uuid)
        return rec

    async def delete_all(self) -> int:
        # Admin only: deployments/security.py refuses the request before it gets here.
        n: int = await self.indexer.delete_all.remote()
        return n

    async def thumbnail(self, meta_uuid: str) -> bytes:
        jpeg: bytes = await self.indexer.thumbnail.remote(meta_uuid)
        return jpeg

    async def object_bytes(self, key: str) -> bytes:
        data: bytes = await self.indexer.object_bytes.remote(key)
        return data

    # -- duplicate review -----------------------------------------------------------------
    async def duplicates(self, threshold: float | None, offset: int, limit: int) -> DuplicatePage:
        """Groups of copies and near-duplicates; the threshold defaults to the configured one."""
        opts = self.settings.duplicates
        value = opts.threshold if threshold is None else threshold
        query = DuplicateQuery(check_threshold(value, opts.max_threshold), offset, limit, opts)
        page: DuplicatePage = await self.indexer.duplicates.remote(query)
        return page
