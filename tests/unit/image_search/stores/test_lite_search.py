"""lite_search against Milvus Lite's own executor: the same hits on the same snapshot.

One in-process Milvus Lite collection holds every case the fast path must get right: a key
upserted into a later segment, flushed deletes, deletes and upserts still in the memtable,
unflushed rows, and a row deleted while still in the memtable. Both functions then answer the
same queries on the same snapshot of segments, memtable and tombstones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

milvus_lite = pytest.importorskip("milvus_lite")

from milvus_lite.db import MilvusLite  # noqa: E402
from milvus_lite.index.faiss_hnsw import FaissHnswIndex  # noqa: E402
from milvus_lite.schema.types import CollectionSchema, DataType, FieldSchema  # noqa: E402
from milvus_lite.search.executor_indexed import execute_search_with_index  # noqa: E402

from image_search.stores import lite_search  # noqa: E402

DIM = 8


def _rows(rng: np.random.Generator, ids: range, tag: int) -> list[dict[str, Any]]:
    vecs = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    return [{"id": i, "tag": tag, "vector": v.tolist()} for i, v in zip(ids, vecs, strict=True)]


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    rng = np.random.default_rng(7)
    db = MilvusLite(str(Path(tmp_path_factory.mktemp("lite")) / "data"))
    schema = CollectionSchema(
        fields=[
            FieldSchema("id", DataType.INT64, is_primary=True),
            FieldSchema("tag", DataType.INT64),
            FieldSchema("vector", DataType.FLOAT_VECTOR, dim=DIM),
        ]
    )
    c = db.create_collection("t", schema)
    c.create_index("vector", {"index_type": "HNSW", "metric_type": "L2", "params": {"M": 8}})
    c.load()
    c.insert(_rows(rng, range(0, 300), tag=1))
    c.flush()
    c.upsert(_rows(rng, range(250, 350), tag=2))  # 250-299 now live in the second segment
    c.flush()
    c.delete(list(range(0, 10)))
    c.flush()
    c.insert(_rows(rng, range(0, 2), tag=6))  # written again after a flushed delete
    c.flush()
    c.insert(_rows(rng, range(350, 400), tag=3))  # in the memtable only
    c.upsert(_rows(rng, range(100, 110), tag=4))  # newer than their flushed rows
    c.delete([*range(20, 25), 360, 361, 362])  # flushed rows and memtable rows
    c.insert(_rows(rng, range(361, 362), tag=5))  # deleted, then written again
    # Each flush leaves Milvus Lite compacting and building indexes in a thread of its own; a
    # segment whose index lands between the two searches of a comparison is searched exactly by
    # one and by HNSW by the other. Compare on the settled collection, as a server serves it.
    c._wait_for_bg()
    yield c
    db.close()


def _snapshot(c: Any) -> dict[str, Any]:
    segments, delta = c._read_snapshot()
    return {
        "segments": segments, "memtable": c._memtable, "delta_index": delta,
        "metric_type": "L2", "pk_field": "id", "vector_field": "vector",
        "project_record_fn": lambda r: {k: v for k, v in r.items() if k not in ("id", "vector")},
        "search_params": {"ef": 64},
    }  # fmt: skip


def _both(c: Any, queries: np.ndarray, top_k: int) -> tuple[list[Any], list[Any]]:
    args = _snapshot(c)
    ours = lite_search.fast_search(
        execute_search_with_index, query_vectors=queries, top_k=top_k, **args
    )
    theirs = execute_search_with_index(query_vectors=queries, top_k=top_k, **args)
    return ours, theirs


def test_the_snapshot_has_every_case(collection: Any) -> None:
    args = _snapshot(collection)
    segments = tuple(s for s in args["segments"] if s.num_rows > 0)
    state = lite_search._Cache().get(segments)
    assert len(segments) >= 2
    assert all(isinstance(s.indexes.get("vector"), FaissHnswIndex) for s in segments)
    assert any(w is not None for w in state.winners), "no key lives in two segments"
    assert args["delta_index"].snapshot, "no flushed tombstone"
    assert collection._memtable.delete_index_snapshot(), "no tombstone in the memtable"
    assert collection._memtable.to_search_snapshot(vector_field="vector")[0], "no memtable rows"


@pytest.mark.parametrize("top_k", [1, 10, 500])
def test_same_hits_as_milvus_lite(collection: Any, top_k: int) -> None:
    rng = np.random.default_rng(top_k)
    for _ in range(10):
        ours, theirs = _both(collection, rng.standard_normal((3, DIM)).astype(np.float32), top_k)
        assert ours == theirs


def test_same_hits_with_the_vectorized_pass(
    collection: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lite_search, "VECTORIZE_SUPERSEDED_ABOVE", 0)
    rng = np.random.default_rng(1)
    ours, theirs = _both(collection, rng.standard_normal((20, DIM)).astype(np.float32), 400)
    assert ours == theirs


def test_a_query_of_a_stored_vector_finds_only_live_rows(collection: Any) -> None:
    """The cases themselves, not only agreement: deleted keys never come back, upserts once."""
    queries = np.random.default_rng(3).standard_normal((4, DIM)).astype(np.float32)
    ours, _ = _both(collection, queries, 500)
    for hits in ours:
        ids = [h["id"] for h in hits]
        assert len(ids) == len(set(ids))
        assert not set(ids) & {*range(2, 10), *range(20, 25), 360, 362}
        assert {0, 1, 361} <= set(ids)
        tags = {h["id"]: h["entity"]["tag"] for h in hits}
        assert tags[105] == 4 and tags[260] == 2 and tags[361] == 5 and tags[0] == 6


def test_filters_go_to_milvus_lite(collection: Any) -> None:
    calls: list[dict[str, Any]] = []

    def upstream(**kwargs: Any) -> list[list[dict]]:
        calls.append(kwargs)
        return execute_search_with_index(**kwargs)

    args = _snapshot(collection)
    query = np.ones((1, DIM), np.float32)
    lite_search.fast_search(upstream, query_vectors=query, top_k=5, **args)
    assert not calls
    compiled = collection._compile_filter("tag == 3")
    hits = lite_search.fast_search(
        upstream, query_vectors=query, top_k=5, compiled_filter=compiled, **args
    )
    assert len(calls) == 1
    assert hits and all(h["entity"]["tag"] == 3 for h in hits[0])


def test_install_only_on_the_version_it_was_written_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import milvus_lite.engine.collection as engine

    monkeypatch.setattr(engine, "execute_search_with_index", execute_search_with_index)
    monkeypatch.setattr(milvus_lite, "__version__", "0.0.1")
    assert not lite_search.install()
    assert engine.execute_search_with_index is execute_search_with_index
    monkeypatch.setattr(milvus_lite, "__version__", lite_search.SUPPORTED_VERSION)
    assert lite_search.install()
    assert engine.execute_search_with_index is not execute_search_with_index


def test_a_new_set_of_segments_is_worked_out_again(tmp_path: Path) -> None:
    """The per-segment-set answer is cached: a flush of an upsert must not reuse the old one."""
    rng = np.random.default_rng(11)
    db = MilvusLite(str(tmp_path / "data"))
    schema = CollectionSchema(
        fields=[
            FieldSchema("id", DataType.INT64, is_primary=True),
            FieldSchema("tag", DataType.INT64),
            FieldSchema("vector", DataType.FLOAT_VECTOR, dim=DIM),
        ]
    )
    try:
        c = db.create_collection("t", schema)
        c.insert(_rows(rng, range(0, 50), tag=1))
        c.flush()
        queries = rng.standard_normal((5, DIM)).astype(np.float32)
        ours, theirs = _both(c, queries, 60)
        assert ours == theirs and all(len(h) == 50 for h in ours)
        c.upsert(_rows(rng, range(0, 50), tag=2))
        c.flush()
        ours, theirs = _both(c, queries, 60)
        assert ours == theirs
        assert all(len(h) == 50 and {x["entity"]["tag"] for x in h} == {2} for h in ours)
    finally:
        db.close()


def _segment(name: str, keys: range, first_seq: int) -> SimpleNamespace:
    pks = list(keys)
    seqs = np.arange(first_seq, first_seq + len(pks), dtype=np.uint64)
    return SimpleNamespace(file_path=f"/data/{name}.parquet", num_rows=len(pks), pks=pks, seqs=seqs)


def test_a_flush_checks_only_the_new_segment_against_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checks: list[int] = []
    share = lite_search._share_a_key

    def counted(a: np.ndarray, b: np.ndarray) -> bool:
        checks.append(1)
        return share(a, b)

    monkeypatch.setattr(lite_search, "_share_a_key", counted)
    cache = lite_search._Cache()
    a, b = _segment("a", range(0, 100), 0), _segment("b", range(100, 200), 100)
    assert cache.get((a, b)).winners == (None, None) and len(checks) == 1
    c = _segment("c", range(200, 210), 200)
    assert cache.get((a, b, c)).winners == (None, None, None) and len(checks) == 3
    assert cache.get((a, b, c)) is cache.get((a, b, c)) and len(checks) == 3
    # An upsert of key 5 flushed later: the older row loses, wherever the pair check stands.
    d = _segment("d", range(5, 6), 300)
    state = cache.get((a, b, c, d))
    winners_a = state.winners[0]
    assert winners_a is not None and not winners_a[5] and winners_a.sum() == 99
    assert state.winners[1:] == (None, None, None)
    # A compaction's new set: worked out again, not taken from the old one.
    assert cache.get((a, b)).winners == (None, None)


def test_sorted_key_arrays_share_a_key_only_when_they_do() -> None:
    assert not lite_search._share_a_key(np.arange(0, 10), np.arange(10, 20))
    assert lite_search._share_a_key(np.arange(0, 10), np.array([3]))
    assert lite_search._share_a_key(np.array([19]), np.arange(10, 20))
    assert not lite_search._share_a_key(np.array([], np.int64), np.arange(3))
    assert not lite_search._share_a_key(np.array([25]), np.arange(10, 20))
