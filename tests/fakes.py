"""Stand-ins for what fast tests isolate: an in-memory vector index and DeploymentHandles.

Everything else in the fast tests is real: SQLite metadata, a local object folder, the real
decoder, the real IndexService and the Indexer deployment's own methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from image_search.decoding import Decoding
from image_search.embedding import EmbeddedUpload, Embedding
from image_search.imaging import DecodedImage
from image_search.stores.base import VectorHit

DIM = 8


def unit_vector(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


class MemoryVectorIndex:
    """VectorIndex by brute force over a dict; enough to test the protocol above it."""

    name = "vectors"

    def __init__(self, dim: int = DIM, model_id: str = "fake:fp32") -> None:
        self.dim = dim
        self.model_id = model_id
        self.rows: dict[int, np.ndarray] = {}
        self.flushes = 0
        self.searches: list[list[int] | None] = []  # each search's id restriction, if any
        self.batches: list[int] = []  # the rows of each search_many

    def upsert(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors shape {vectors.shape} != ({len(ids)}, {self.dim})")
        self.rows.update({int(i): v.astype(np.float32) for i, v in zip(ids, vectors, strict=True)})

    def search(
        self, vector: np.ndarray, limit: int, ids: Sequence[int] | None = None
    ) -> list[VectorHit]:
        among = self.rows if ids is None else {i: self.rows[i] for i in ids if i in self.rows}
        self.searches.append(None if ids is None else sorted(among))
        hits = [VectorHit(i, float(np.sum((v - vector) ** 2))) for i, v in among.items()]
        return sorted(hits, key=lambda h: h.distance)[:limit]

    def search_many(self, vectors: np.ndarray, limit: int) -> list[list[VectorHit]]:
        self.batches.append(len(vectors))
        return [self.search(v, limit) for v in vectors]

    def range_search(self, vectors: np.ndarray, radius: float, limit: int) -> list[list[VectorHit]]:
        return [[h for h in self.search(v, len(self.rows)) if h.distance <= radius][:limit]
                for v in vectors]  # fmt: skip

    def get(self, ids: Sequence[int], fresh: bool = True) -> dict[int, np.ndarray]:
        return {int(i): self.rows[int(i)] for i in ids if int(i) in self.rows}

    def delete(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.rows.pop(int(i), None)

    def count(self) -> int:
        return len(self.rows)

    def ids(self, within: tuple[int, int] | None = None) -> Iterator[int]:
        lo, hi = within or (0, 2**63)
        yield from [i for i in self.rows if lo <= i < hi]

    def flush(self) -> None:
        self.flushes += 1

    def flush_if_due(self) -> None:
        pass

    def ping(self) -> None:
        pass

    def drop(self) -> None:
        self.rows.clear()


class FakeEmbedder:
    """The Embedder deployment's methods, with a cheap deterministic 'model'.

    Equal pixels give equal vectors, so an image searched with itself comes first at distance 0.
    `other_model_calls` makes the first N calls answer as another model (a switch under way).
    """

    def __init__(self, model_id: str = "fake:fp32", other_model_calls: int = 0) -> None:
        self.model_id = model_id
        self.other_model_calls = other_model_calls
        self.calls = 0
        # How a query is decoded (embed_query): the service under test sets its own.
        self.decoding: Decoding | None = None

    def _one(self, image: DecodedImage) -> Embedding:
        self.calls += 1
        flat = image.pixels.astype(np.float32).reshape(-1)
        v = np.array([chunk.mean() for chunk in np.array_split(flat, DIM)], dtype=np.float32)
        v = v - v.mean() + 1e-3 * np.arange(DIM, dtype=np.float32)
        model = self.model_id if self.calls > self.other_model_calls else "other:fp32"
        return Embedding(model, v / np.linalg.norm(v))

    def embed_query(self, data: bytes, regions: bool = False) -> Embedding:
        assert self.decoding is not None, "the service sets how its queries are decoded"
        return self._one(self.decoding.decode(data, False, regions))

    def embed_upload(self, image: DecodedImage) -> EmbeddedUpload:
        return EmbeddedUpload(self._one(image), image.facts())

    def embed_upload_bytes(self, data: bytes, regions: bool = False) -> EmbeddedUpload:
        assert self.decoding is not None, "the service sets how its uploads are decoded"
        return self.embed_upload(self.decoding.decode(data, True, regions))

    async def many(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        from deployments.hops import run_many  # Ray's; only the deployments' tests get here

        return await run_many(self, ("embed_upload", "embed_upload_bytes", "embed_query"), calls)

    def info(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "dim": DIM}


class FakeHandle:
    """A DeploymentHandle over a plain object: `handle.method.remote(*args)` runs it as a task.
    (Flows await each call before the next, so no argument is ever a pending call.)"""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self._target, name))


class _Method:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> asyncio.Task[Any]:
        return asyncio.ensure_future(self._call(*args))

    async def _call(self, *args: Any) -> Any:
        result = self._fn(*args)
        return await result if asyncio.iscoroutine(result) else result
