"""Vectors in Milvus through pymilvus: a Milvus server or Milvus Lite served locally, one code."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.client.types import LoadState
from pymilvus.exceptions import MilvusException

from image_search.embedding.runtime import same_model
from image_search.errors import ConfigError, StoreUnavailable
from image_search.stores.base import IdRange, RegionHit, VectorHit

logger = logging.getLogger(__name__)
T = TypeVar("T")

PROP_MODEL = "ise.model_id"
PROP_DIM = "ise.dim"
# Set on a collection created with region search on (its region collection is complete: every
# content written to it got its region vectors in the same write); the value names the recipe
# (image_search.regions), so vectors of another recipe are never mixed in.
PROP_REGIONS = "ise.regions"
# Milvus Lite searches rows that are not yet flushed by brute force: every query pays ~0.06 ms
# of its CPU per such row (16 ms with 256 of them), while a flush costs ~20 ms plus ~0.2 ms per
# row. So writes are flushed once FLUSH_ROWS are pending, after FLUSH_AFTER_S without writes,
# or, where searches are paying for the tail, once SEARCHED_FLUSH_ROWS are pending, at the
# owner's next check (FLUSH_CHECK_S), so that no search runs a flush itself (one may still meet
# a flush inside Milvus Lite: their p99 is what this rule trades). 64, not fewer: 32 flushed so
# often that the searches' p99 rose 2.6x (`python -m bench.lite_tail --searched-rows 32`; the
# README has the figures).
# A Milvus server is left alone: it searches growing segments itself and seals them on its own,
# and a flush every second would litter it with tiny segments.
FLUSH_ROWS = 256
FLUSH_AFTER_S = 1.0
SEARCHED_FLUSH_ROWS = 64
# Milvus refuses a search for more hits than this (its topk limit), whatever the index.
MAX_TOP_K = 16384
BOX_FIELDS = ("left", "top", "right", "bottom")  # a region's box, fractions of its image
Box = tuple[float, float, float, float]
# Added to a range search's radius, which Milvus treats as exclusive, so that a vector
# exactly at the threshold is in range (distances are float32: ~1e-7 apart near 1).
RADIUS_SLACK = 1e-6
# gRPC channel options. Each index owns its channel and its transport (pymilvus would share
# one per address, and gRPC one per target): dropping a broken client then really reconnects,
# instead of reusing a transport the server has closed.
OWN_CHANNEL = {"grpc.use_local_subchannel_pool": 1}
# Milvus Lite's server (grpcio, default ping policy) answers a client's keepalive pings with
# GOAWAY "too_many_pings", and every call on that connection fails (seen in CI). It runs on
# loopback beside us, where keepalives detect nothing a closed socket does not.
NO_KEEPALIVE = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}


class MilvusVectorIndex:
    """VectorIndex over one Milvus collection that records the model id and dimension."""

    name = "vectors"

    def __init__(
        self,
        uri: str,
        collection: str,
        dim: int,
        model_id: str,
        index_type: str = "HNSW",
        index_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
        consistency_level: str = "Strong",
        search_consistency_level: str | None = None,
        timeout_s: float = 5.0,
        token: str = "",
        regions: str = "",
        keepalive: bool = True,
    ) -> None:
        self.uri = uri
        self.collection = collection
        self.dim = dim
        self.model_id = model_id
        self.index_type = index_type
        self.index_params = dict(index_params or {})
        self.search_params = dict(search_params or {})
        # Reads the consistency protocol relies on (get, ids) use consistency_level; similarity
        # searches use search_consistency_level (config.py says why they differ).
        self.consistency_level = consistency_level
        self.search_consistency_level = search_consistency_level or consistency_level
        self.timeout_s = timeout_s
        self.token = token
        self.grpc_options = OWN_CHANNEL if keepalive else {**OWN_CHANNEL, **NO_KEEPALIVE}
        self._client: MilvusClient | None = None
        self._lock = threading.Lock()
        # The unflushed tail (Milvus Lite only): written by the write path, searches and the
        # owner's flush check, from different threads.
        self._tail_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending = 0
        self._searched = False  # a search ran while rows were pending
        self._last_write = 0.0
        self._lite = False  # Milvus Lite (flushed by us) or a Milvus server; known on connect
        # The region recipe a new collection is created with ("" = none); once connected, the
        # one the collection records (has_regions).
        self.regions = regions

    @property
    def _slow_timeout(self) -> float:
        # Loading, flushing and dropping take seconds on a server even when it is healthy;
        # every call still gets a deadline (pymilvus retries ~75 times without one).
        return max(60.0, self.timeout_s)

    # -- connection -----------------------------------------------------------------------
    def _connect(self) -> MilvusClient:
        with self._lock:
            if self._client is None:
                client = MilvusClient(uri=self.uri, token=self.token, timeout=self.timeout_s,
                                      dedicated=True, grpc_options=self.grpc_options)  # fmt: skip
                try:
                    version = str(client.get_server_version(timeout=self.timeout_s))
                    self._lite = version.startswith("milvus_lite")
                    self._ensure_collection(client)
                except BaseException:
                    client.close()
                    raise
                self._client = client
            return self._client

    def _call(self, what: str, fn: Callable[[MilvusClient], T]) -> T:
        try:
            return fn(self._connect())
        except ConfigError:
            raise
        except (MilvusException, grpc.RpcError, OSError, ConnectionError, TimeoutError) as exc:
            # pymilvus lets some raw gRPC errors through (DEADLINE_EXCEEDED while a restarted
            # server reloads). Drop the client: the next call reconnects, so the service
            # recovers by itself once the server is back.
            self._reset()
            raise StoreUnavailable(f"vector index unavailable ({what}): {exc}", "vectors") from exc

    def _reset(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(MilvusException, OSError):
                client.close()

    def _ensure_collection(self, client: MilvusClient) -> None:
        if client.has_collection(self.collection, timeout=self.timeout_s):
            desc = client.describe_collection(self.collection, timeout=self.timeout_s)
            props = desc.get("properties", {}) or {}
            found_model, found_dim = props.get(PROP_MODEL), props.get(PROP_DIM)
            self.regions = str(props.get(PROP_REGIONS, ""))
            if not same_model(str(found_model), self.model_id) or str(found_dim) != str(self.dim):
                raise ConfigError(
                    f"collection {self.collection!r} was built with model {found_model} "
                    f"(dim {found_dim}), but the service is configured for {self.model_id} "
                    f"(dim {self.dim}). Searching it with another model would return nonsense: "
                    "run `image-search reembed`, set stores.collection to a new name, or set "
                    "model.runtime and model.precision to what built it (a collection from "
                    "before runtimes were named was built by runtime torch)."
                )
            if not client.list_indexes(self.collection, timeout=self.timeout_s):
                # A create that died between the collection and its index (server stopped).
                client.create_index(self.collection, self.index_spec(client),
                                    timeout=self.timeout_s)  # fmt: skip
            # Instant when loaded. A restarted server reloads in the background and takes a
            # while: give up after the short timeout (a fast 503), ask again on the next call.
            # Milvus Lite loads inside the call, so it gets the time it needs.
            wait = self._slow_timeout if self._lite else self.timeout_s
            client.load_collection(self.collection, timeout=wait)
            return
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        client.create_collection(
            self.collection,
            schema=schema,
            index_params=self.index_spec(client),
            consistency_level=self.consistency_level,
            properties={PROP_MODEL: self.model_id, PROP_DIM: str(self.dim),
                        **({PROP_REGIONS: self.regions} if self.regions else {})},
            timeout=self._slow_timeout,
        )  # fmt: skip
        logger.info("created collection %s (%s, dim %d, regions %s)", self.collection,
                    self.model_id, self.dim, self.regions or "none")  # fmt: skip

    def has_regions(self) -> str:
        """The region recipe this collection records ("" = built without region vectors).
        Read when the client connects; through _call, so an outage is a StoreUnavailable."""
        return self._call("describe", lambda _c: self.regions)

    def index_spec(self, client: MilvusClient) -> Any:
        """The index this store builds on its vectors (type, metric, parameters), as `client`
        takes it; public for a benchmark that rebuilds a collection's index (bench.index_cost)."""
        index = client.prepare_index_params()
        index.add_index(
            field_name="vector",
            index_type=self.index_type,
            metric_type="L2",
            params=self.index_params,
        )
        return index

    # -- VectorIndex ----------------------------------------------------------------------
    def upsert(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        rows = self._rows(ids, vectors)
        if rows:
            self._call("upsert", lambda c: c.upsert(self.collection, rows, timeout=self.timeout_s))
            self._wrote(len(rows))

    def insert_new(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """A bulk load of keys this collection never held (bench.search_scale's fill). Not
        upsert's delete records, which a Milvus server later rewrites every segment to drop
        (README, "A million vectors"); but a key given twice, or a call retried after it
        landed, is then stored twice, so the service itself always upserts."""
        rows = self._rows(ids, vectors)
        if rows:
            self._call("insert", lambda c: c.insert(self.collection, rows, timeout=self.timeout_s))
            self._wrote(len(rows))

    def _rows(self, ids: Sequence[int], vectors: np.ndarray) -> list[dict[str, Any]]:
        if len(ids) == 0:
            return []
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors shape {vectors.shape} != ({len(ids)}, {self.dim})")
        return [{"id": int(i), "vector": v.tolist()} for i, v in zip(ids, vectors, strict=True)]

    def _wrote(self, rows: int) -> None:
        if not self._lite:
            return
        with self._tail_lock:
            self._pending += rows
            self._last_write = time.monotonic()
            full = self._pending >= FLUSH_ROWS
        if full:
            self.flush()

    def _searching(self) -> None:
        if self._pending:  # read without the lock: at worst noted one check late
            self._searched = True

    def flush_if_due(self) -> None:
        """VectorIndex.flush_if_due, by the rules above FLUSH_ROWS (Milvus Lite only)."""
        with self._tail_lock:
            pending, searched = self._pending, self._searched
            idle = time.monotonic() - self._last_write >= FLUSH_AFTER_S
        if pending and (idle or (searched and pending >= SEARCHED_FLUSH_ROWS)):
            self.flush()

    def flush(self) -> None:
        with self._flush_lock:  # one at a time, so each takes off only what it flushed
            with self._tail_lock:
                flushing = self._pending
            self._call("flush", lambda c: c.flush(self.collection, timeout=self._slow_timeout))
            with self._tail_lock:
                # Rows written while it ran may have missed it: they stay counted (never below
                # zero: a drop() meanwhile has already cleared the count).
                self._pending = max(0, self._pending - flushing)
                self._searched = False

    def search(
        self, vector: np.ndarray, limit: int, ids: Sequence[int] | None = None
    ) -> list[VectorHit]:
        """The nearest `limit` vectors; with `ids`, Milvus filters to them before ranking,
        so the answer is the nearest among them (a tag filter's restricted search)."""
        if ids is not None and not ids:
            return []
        # A literal list, not a template (filter_params): Milvus servers before 2.5 have none.
        expr = "" if ids is None else f"id in [{','.join(str(int(i)) for i in ids)}]"
        return self._search(np.asarray(vector)[None, :], limit, expr)[0]

    def search_many(self, vectors: np.ndarray, limit: int) -> list[list[VectorHit]]:
        """search() for each row of `vectors`, in one request: a Milvus request's own cost
        (gRPC, the server's scheduling, pymilvus) is most of a search's at our sizes, and
        the rows share it (README, How it works)."""
        return self._search(vectors, limit, "") if len(vectors) else []

    def _search(self, vectors: np.ndarray, limit: int, expr: str) -> list[list[VectorHit]]:
        # A list: pymilvus packs a numpy array element by element, slower still.
        data = np.asarray(vectors, dtype=np.float32).tolist()
        self._searching()

        def run(c: MilvusClient) -> list[list[VectorHit]]:
            res = c.search(
                self.collection,
                data=data,
                filter=expr,
                limit=limit,
                # Named, though the id comes with every hit anyway: asked for nothing, Milvus
                # Lite sends each hit's vector along (5 kB each), which it reads and pymilvus
                # decodes -- 2.5 of 11.6 ms a search at 2,000 vectors. A Milvus server sends
                # none either way (the same 19-23 ms of its CPU per search at 20,000).
                output_fields=["id"],
                search_params={"metric_type": "L2", "params": self.search_params_for(limit)},
                consistency_level=self.search_consistency_level,
                timeout=self.timeout_s,
            )
            out = [[VectorHit(int(h["id"]), float(h["distance"])) for h in hits] for hits in res]
            # One list per query row, even where an answer came back short of rows.
            return out + [[] for _ in range(len(data) - len(out))]

        return self._call("search", run)

    def range_search(self, vectors: np.ndarray, radius: float, limit: int) -> list[list[VectorHit]]:
        """Milvus range search: one request for every query row, `radius` on the L2 metric.

        Milvus's radius is exclusive for L2 (range_filter <= distance < radius); RADIUS_SLACK
        makes it inclusive. No range_filter: a server computes squared L2 as |a|^2 + |b|^2 -
        2ab, which can come out a hair below 0 for identical vectors. A Milvus server searches
        the index and keeps what falls in range; Milvus Lite takes 5 x limit nearest and
        filters them: both return at most `limit` per query, nearest first.
        """
        if len(vectors) == 0:
            return []
        params = self.search_params_for(limit)
        params["radius"] = float(radius) + RADIUS_SLACK
        data = np.asarray(vectors, dtype=np.float32).tolist()
        self._searching()

        def run(c: MilvusClient) -> list[list[VectorHit]]:
            res = c.search(
                self.collection,
                data=data,
                limit=limit,
                output_fields=["id"],
                search_params={"metric_type": "L2", "params": params},
                consistency_level=self.search_consistency_level,
                timeout=self._slow_timeout,
            )
            return [[VectorHit(int(h["id"]), float(h["distance"])) for h in hits] for hits in res]

        return self._call("range search", run)

    def search_params_for(self, limit: int) -> dict[str, Any]:
        """The configured search parameters, made valid for a search for `limit` hits."""
        params = dict(self.search_params)
        if self.index_type == "HNSW":
            # ef is HNSW's candidate list: a Milvus server rejects a search whose ef is below
            # the number of hits asked for ("ef(128) should be larger than k(300)"), so a large
            # page failed in production only (Milvus Lite ignores HNSW parameters). Raising ef
            # to the limit is the least that answers; the configured ef stays the floor for
            # recall. Above MAX_TOP_K the search fails on top-k whatever ef is.
            params["ef"] = max(int(params.get("ef", 0)), min(limit, MAX_TOP_K))
        return params

    def get(self, ids: Sequence[int], fresh: bool = True) -> dict[int, np.ndarray]:
        if not ids:
            return {}
        # Strong waits for the server's time tick (~200 ms per call on a Milvus server).
        level = self.consistency_level if fresh else self.search_consistency_level

        def run(c: MilvusClient) -> dict[int, np.ndarray]:
            rows = c.get(
                self.collection,
                ids=[int(i) for i in ids],
                output_fields=["vector"],
                timeout=self.timeout_s,
                consistency_level=level,
            )
            return {int(r["id"]): np.asarray(r["vector"], dtype=np.float32) for r in rows}

        return self._call("get", run)

    def delete(self, ids: Sequence[int]) -> None:
        if ids:
            ids_ = [int(i) for i in ids]
            self._call(
                "delete", lambda c: c.delete(self.collection, ids=ids_, timeout=self.timeout_s)
            )

    def count(self) -> int:
        def run(c: MilvusClient) -> int:
            res = c.query(
                self.collection,
                filter="",
                output_fields=["count(*)"],
                consistency_level=self.consistency_level,
                timeout=self.timeout_s,
            )
            return int(res[0]["count(*)"])

        return self._call("count", run)

    def ids(self, within: IdRange | None = None) -> Iterator[int]:
        yield from self._scan("ids", "id", _in_range("id", within))

    def _scan(self, what: str, field: str, expr: str = "") -> list[int]:
        """Every row's integer `field` (matching `expr`), read in pages by a query iterator."""

        def run(c: MilvusClient) -> list[int]:
            it = c.query_iterator(self.collection, batch_size=4096, filter=expr,
                                  output_fields=[field], timeout=self._slow_timeout)  # fmt: skip
            out: list[int] = []
            while batch := it.next():
                out.extend(int(r[field]) for r in batch)
            it.close()
            return out

        return self._call(what, run)

    def ping(self) -> None:
        def run(c: MilvusClient) -> None:
            state = c.get_load_state(self.collection, timeout=self.timeout_s)["state"]
            if state != LoadState.Loaded:
                # Answering, but searches would block until the collection is loaded.
                raise MilvusException(message=f"collection {self.collection!r} is {state.name}")

        self._call("ping", run)

    def drop(self) -> None:
        self._call("drop", lambda c: c.drop_collection(self.collection, timeout=self._slow_timeout))
        self._reset()
        with self._tail_lock:
            self._pending = 0
            self._searched = False


def region_row_id(owner: int, part: int) -> int:
    """A region vector's id: derived from its image's vector id and part number, so writes are
    idempotent upserts and a delete needs no query first."""
    digest = hashlib.blake2b(f"{owner}:{part}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


class MilvusRegionIndex(MilvusVectorIndex):
    """Region search's second collection: per image (its vector id, `owner`) up to MAX_PARTS
    vectors, its thumbnail view (part 0) and its regions (1..), each with its box in the image.

    Milvus 2.3.5 has no grouping search, so searches return parts; the caller over-fetches
    (image_search.regions.fetch_sizes) and merges per owner.
    """

    name = "regions"

    def __init__(self, *args: Any, max_parts: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_parts = max_parts

    def _ensure_collection(self, client: MilvusClient) -> None:
        if client.has_collection(self.collection, timeout=self.timeout_s):
            super()._ensure_collection(client)
            return
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("owner", DataType.INT64)
        schema.add_field("part", DataType.INT32)
        for edge in BOX_FIELDS:
            schema.add_field(edge, DataType.FLOAT)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        client.create_collection(
            self.collection,
            schema=schema,
            index_params=self.index_spec(client),
            consistency_level=self.consistency_level,
            properties={PROP_MODEL: self.model_id, PROP_DIM: str(self.dim)},
            timeout=self._slow_timeout,
        )
        logger.info("created region collection %s (%s)", self.collection, self.model_id)

    def upsert_parts(
        self, owners: Sequence[int], vectors: Sequence[np.ndarray], boxes: Sequence[Sequence[Box]]
    ) -> None:
        """Each owner's parts: vectors[i] (n_i, dim) with boxes[i] (n_i boxes), part = row."""
        rows: list[dict[str, Any]] = []
        for owner, vecs, bxs in zip(owners, vectors, boxes, strict=True):
            if len(vecs) != len(bxs) or len(vecs) > self.max_parts:
                raise ValueError(f"{len(vecs)} region vectors, {len(bxs)} boxes for {owner}")
            for part, (vec, box) in enumerate(zip(vecs, bxs, strict=True)):
                rows.append({"id": region_row_id(owner, part), "owner": int(owner), "part": part,
                             **dict(zip(BOX_FIELDS, map(float, box), strict=True)),
                             "vector": np.asarray(vec, np.float32).tolist()})  # fmt: skip
        if not rows:
            return
        self._call("upsert", lambda c: c.upsert(self.collection, rows, timeout=self.timeout_s))
        self._wrote(len(rows))

    def search_parts(self, vectors: np.ndarray, limit: int) -> list[list[RegionHit]]:
        """For each query row, its `limit` nearest parts, nearest first (one request)."""
        if len(vectors) == 0:
            return []
        data = np.asarray(vectors, dtype=np.float32).tolist()
        params = self.search_params_for(limit)
        self._searching()

        def run(c: MilvusClient) -> list[list[RegionHit]]:
            res = c.search(
                self.collection,
                data=data,
                limit=min(limit, MAX_TOP_K),
                output_fields=["owner", "part", *BOX_FIELDS],
                search_params={"metric_type": "L2", "params": params},
                consistency_level=self.search_consistency_level,
                timeout=self.timeout_s,
            )
            out: list[list[RegionHit]] = []
            for hits in res:
                row: list[RegionHit] = []
                for h in hits:
                    e = h.get("entity", h)
                    box = tuple(float(e[k]) for k in BOX_FIELDS)
                    row.append(RegionHit(int(e["owner"]), int(e["part"]), float(h["distance"]),
                                         box))  # type: ignore[arg-type]  # fmt: skip
                out.append(row)
            return out

        return self._call("search", run)

    def part_ids(self, owners: Sequence[int]) -> list[int]:
        return [region_row_id(o, p) for o in owners for p in range(self.max_parts)]

    def delete_owners(self, owners: Sequence[int]) -> None:
        """Every part of these images (ids derived: no query first; absent ones are no-ops)."""
        for lo in range(0, len(owners), 500):
            self.delete(self.part_ids(owners[lo : lo + 500]))

    def owners_with_parts(self, owners: Sequence[int]) -> set[int]:
        """Those of these images whose parts are stored (their thumbnail view, part 0, is
        written in the same upsert as every region)."""
        by_id = {region_row_id(o, 0): int(o) for o in owners}
        return {by_id[i] for i in self.get(list(by_id))}

    def owners(self, within: IdRange | None = None) -> Iterator[int]:
        """Every image with parts here (reconcile: parts whose image is gone)."""
        expr = " and ".join(filter(None, ["part == 0", _in_range("owner", within)]))
        yield from self._scan("owners", "owner", expr)


_INT64_MAX = 2**63 - 1


def _in_range(field: str, within: IdRange | None) -> str:
    """A filter for `field` in [lo, hi); none for the whole collection."""
    if within is None:
        return ""
    lo, hi = within
    if hi > _INT64_MAX:  # the last part: its bound is not an int64 literal Milvus accepts
        return f"{field} >= {int(lo)}"
    return f"{field} >= {int(lo)} and {field} < {int(hi)}"
