"""A top-k above the configured HNSW `ef` works on every backend (issue 10, defect 7).

A Milvus server refuses an HNSW search whose ef is below the number of hits asked for, while
Milvus Lite ignores HNSW parameters: only the server can show the defect, and only once it
serves the rows from their HNSW index.
"""

from __future__ import annotations

import time

import numpy as np
from pymilvus import MilvusClient

from image_search.stores import VectorIndex
from image_search.stores.vectors import MilvusVectorIndex
from tests.contract.conftest import DIM

# Milvus builds no index for a segment under 1024 rows (searched by brute force, any ef).
ROWS = 2000
LIMIT = 300  # above the default ef (128), and above the ~112 hits where the service broke


def search_through_hnsw(index: MilvusVectorIndex, rows: int, timeout: float = 120.0) -> None:
    """Flush, wait for the HNSW index of every row, and load it: until then the server answers
    from raw segments by brute force, which takes any ef (as Milvus Lite always does)."""
    index.flush()
    client = MilvusClient(uri=index.uri, token=index.token, timeout=10)
    try:
        deadline = time.monotonic() + timeout
        while True:
            info = client.describe_index(index.collection, "vector", timeout=10)
            if info.get("indexed_rows", 0) >= rows and not info.get("pending_index_rows", 0):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"HNSW index not built after {timeout}s: {info}")
            time.sleep(0.5)
        # A reload serves the sealed segments from their index, not from the raw rows.
        client.release_collection(index.collection, timeout=60)
        client.load_collection(index.collection, timeout=60)
    finally:
        client.close()


def test_search_for_more_hits_than_ef(vector_index: VectorIndex) -> None:
    assert isinstance(vector_index, MilvusVectorIndex)
    assert vector_index.index_type == "HNSW"
    assert int(vector_index.search_params["ef"]) < LIMIT  # the configuration that broke
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = list(range(1, ROWS + 1))
    vector_index.upsert(ids, vecs)
    if not vector_index._lite:
        search_through_hnsw(vector_index, ROWS)

    hits = vector_index.search(vecs[0], LIMIT)

    assert len(hits) == LIMIT
    assert hits[0].id == 1 and hits[0].distance < 1e-4
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert len({h.id for h in hits}) == LIMIT
