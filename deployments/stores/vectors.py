"""Vectors in Milvus through pymilvus: a Milvus server, or Milvus Lite served locally (same code)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from deployments.errors import ConfigError, StoreUnavailable
from deployments.stores.base import VectorHit

logger = logging.getLogger(__name__)
T = TypeVar("T")

PROP_MODEL = "ise.model_id"
PROP_DIM = "ise.dim"
# Milvus Lite searches rows that are not yet flushed by brute force, ~0.1 ms per row per query
# (measured: 0.6 s with 5,000 unflushed rows, 25 ms once flushed). Flushing small increments is
# cheap (~6 ms), so writes are flushed once this many rows are pending or after FLUSH_AFTER_S.
FLUSH_ROWS = 256
FLUSH_AFTER_S = 1.0


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
        timeout_s: float = 5.0,
        token: str = "",
    ) -> None:
        self.uri = uri
        self.collection = collection
        self.dim = dim
        self.model_id = model_id
        self.index_type = index_type
        self.index_params = dict(index_params or {})
        self.search_params = dict(search_params or {})
        self.consistency_level = consistency_level
        self.timeout_s = timeout_s
        self.token = token
        self._client: MilvusClient | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._last_write = 0.0

    # -- connection -----------------------------------------------------------------------
    def _connect(self) -> MilvusClient:
        with self._lock:
            if self._client is None:
                client = MilvusClient(uri=self.uri, token=self.token, timeout=self.timeout_s)
                self._ensure_collection(client)
                self._client = client
            return self._client

    def _call(self, what: str, fn: Callable[[MilvusClient], T]) -> T:
        try:
            return fn(self._connect())
        except ConfigError:
            raise
        except (MilvusException, OSError, ConnectionError, TimeoutError) as exc:
            # Drop the client: the next call reconnects, so the service recovers by itself.
            self._client = None
            raise StoreUnavailable(f"vector index unavailable ({what}): {exc}", "vectors") from exc

    def _ensure_collection(self, client: MilvusClient) -> None:
        if client.has_collection(self.collection, timeout=self.timeout_s):
            props = client.describe_collection(self.collection).get("properties", {}) or {}
            found_model, found_dim = props.get(PROP_MODEL), props.get(PROP_DIM)
            if found_model != self.model_id or str(found_dim) != str(self.dim):
                raise ConfigError(
                    f"collection {self.collection!r} was built with model {found_model} "
                    f"(dim {found_dim}), but the service is configured for {self.model_id} "
                    f"(dim {self.dim}). Searching it with another model would return nonsense: "
                    "run `image-search reembed` or set stores.collection to a new name."
                )
            client.load_collection(self.collection)
            return
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        index = client.prepare_index_params()
        index.add_index(
            field_name="vector",
            index_type=self.index_type,
            metric_type="L2",
            params=self.index_params,
        )
        client.create_collection(
            self.collection,
            schema=schema,
            index_params=index,
            consistency_level=self.consistency_level,
            properties={PROP_MODEL: self.model_id, PROP_DIM: str(self.dim)},
        )
        logger.info("created collection %s (%s, dim %d)", self.collection, self.model_id, self.dim)

    # -- VectorIndex ----------------------------------------------------------------------
    def upsert(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors shape {vectors.shape} != ({len(ids)}, {self.dim})")
        rows = [{"id": int(i), "vector": v.tolist()} for i, v in zip(ids, vectors, strict=True)]
        self._call("upsert", lambda c: c.upsert(self.collection, rows, timeout=self.timeout_s))
        self._pending += len(rows)
        self._last_write = time.monotonic()
        if self._pending >= FLUSH_ROWS:
            self.flush()

    def flush_if_due(self) -> None:
        """Called periodically by the owner: flush a small tail of writes once idle."""
        if self._pending and time.monotonic() - self._last_write >= FLUSH_AFTER_S:
            self.flush()

    def flush(self) -> None:
        self._call("flush", lambda c: c.flush(self.collection, timeout=60))
        self._pending = 0

    def search(self, vector: np.ndarray, limit: int) -> list[VectorHit]:
        def run(c: MilvusClient) -> list[VectorHit]:
            res = c.search(
                self.collection,
                data=[np.asarray(vector, dtype=np.float32).tolist()],
                limit=limit,
                output_fields=["id"],
                search_params={"metric_type": "L2", "params": self.search_params},
                consistency_level=self.consistency_level,
                timeout=self.timeout_s,
            )
            hits = res[0] if res else []
            return [VectorHit(int(h["id"]), float(h["distance"])) for h in hits]

        return self._call("search", run)

    def get(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        if not ids:
            return {}

        def run(c: MilvusClient) -> dict[int, np.ndarray]:
            rows = c.get(self.collection, ids=[int(i) for i in ids], output_fields=["vector"])
            return {int(r["id"]): np.asarray(r["vector"], dtype=np.float32) for r in rows}

        return self._call("get", run)

    def delete(self, ids: Sequence[int]) -> None:
        if ids:
            ids_ = [int(i) for i in ids]
            self._call("delete", lambda c: c.delete(self.collection, ids=ids_))

    def count(self) -> int:
        def run(c: MilvusClient) -> int:
            res = c.query(self.collection, filter="", output_fields=["count(*)"])
            return int(res[0]["count(*)"])

        return self._call("count", run)

    def ids(self) -> Iterator[int]:
        def run(c: MilvusClient) -> list[int]:
            it = c.query_iterator(self.collection, batch_size=4096, output_fields=["id"])
            out: list[int] = []
            while batch := it.next():
                out.extend(int(r["id"]) for r in batch)
            it.close()
            return out

        yield from self._call("ids", run)

    def ping(self) -> None:
        self._call("ping", lambda c: c.has_collection(self.collection, timeout=self.timeout_s))

    def drop(self) -> None:
        self._call("drop", lambda c: c.drop_collection(self.collection))
        self._client = None
        self._pending = 0
