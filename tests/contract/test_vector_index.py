"""VectorIndex contract: Milvus Lite's local server and a Milvus server, through one class."""

from __future__ import annotations

import time

import numpy as np
import pytest

from image_search.errors import ConfigError, StoreUnavailable
from image_search.stores import VectorIndex
from tests.contract.conftest import DIM, MODEL_ID, open_index, unique
from tests.servers import MilvusServer, eventually


def unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def test_read_after_write_search_get_count(vector_index: VectorIndex) -> None:
    vecs = unit(5, 1)
    # Ids span the signed 64-bit range. (Milvus 2.3.5 hides exactly 2**63-1 from query/get,
    # though search finds it; milvus_id_for yields it with probability 2**-63.)
    ids = [11, 22, 33, (1 << 63) - 2, 0]
    vector_index.upsert(ids, vecs)
    # No flush, no sleep: consistency Strong means a search right after the write sees it.
    assert vector_index.count() == 5
    for i, vec in zip(ids, vecs, strict=True):
        hits = vector_index.search(vec, 3)
        assert hits[0].id == i and hits[0].distance == pytest.approx(0.0, abs=1e-4)
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        assert all(0.0 <= h.distance <= 4.0 + 1e-4 for h in hits)
    got = vector_index.get([22, 999])
    assert set(got) == {22}
    np.testing.assert_allclose(got[22], vecs[1], atol=1e-6)
    # At the searches' consistency (Session): this client's own writes are seen at once.
    quick = vector_index.get([22, 999], fresh=False)
    assert set(quick) == {22}
    np.testing.assert_allclose(quick[22], vecs[1], atol=1e-6)
    assert sorted(vector_index.ids()) == sorted(ids)


def test_ids_within_a_part(vector_index: VectorIndex) -> None:
    ids = [0, 5, (1 << 60) - 1, 1 << 60, (1 << 62) + 3, (1 << 63) - 2]
    vector_index.upsert(ids, unit(len(ids), 4))
    assert sorted(vector_index.ids((0, 1 << 60))) == [0, 5, (1 << 60) - 1]
    assert sorted(vector_index.ids((1 << 60, 1 << 62))) == [1 << 60]
    # The last part's upper bound, 2**63, is past the int64 range a filter may name.
    assert sorted(vector_index.ids((1 << 62, 1 << 63))) == [(1 << 62) + 3, (1 << 63) - 2]
    assert sorted(vector_index.ids((3, 4))) == []


def test_upsert_same_id_replaces(vector_index: VectorIndex) -> None:
    a, b = unit(2, 2)
    vector_index.upsert([7], a[None])
    vector_index.upsert([7], b[None])
    assert vector_index.count() == 1
    np.testing.assert_allclose(vector_index.get([7])[7], b, atol=1e-6)
    assert vector_index.search(b, 1)[0].distance == pytest.approx(0.0, abs=1e-4)


def test_search_restricted_to_ids(vector_index: VectorIndex) -> None:
    """A tag filter's search: the nearest among the given ids only, however long the list."""
    from image_search.indexing import TAG_PREFILTER_MAX

    vecs = unit(40, 5)
    vector_index.upsert(list(range(1, 41)), vecs)
    query = vecs[0]
    allowed = list(range(2, 41, 3))
    everywhere = [h.id for h in vector_index.search(query, 40)]
    hits = vector_index.search(query, 5, ids=allowed)
    assert [h.id for h in hits] == [i for i in everywhere if i in allowed][:5]
    assert vector_index.search(query, 5, ids=[]) == []
    # The bound's worth of ids, most of them unknown: still one search.
    many = allowed + list(range(10_000, 10_000 + TAG_PREFILTER_MAX - len(allowed)))
    assert [h.id for h in vector_index.search(query, 5, ids=many)] == [h.id for h in hits]


def test_search_many_answers_each_row_as_its_own_search(vector_index: VectorIndex) -> None:
    """The Indexer's batched searches: one request, and each row's hits, in the rows' order,
    are the ones that row's search alone gets."""
    vecs = unit(40, 6)
    vector_index.upsert(list(range(1, 41)), vecs)
    queries = vecs[[3, 17, 3, 29]]  # a repeated row too
    together = vector_index.search_many(queries, 5)
    assert len(together) == 4
    for query, hits in zip(queries, together, strict=True):
        alone = vector_index.search(query, 5)
        assert [h.id for h in hits] == [h.id for h in alone]
        assert [h.distance for h in hits] == pytest.approx([h.distance for h in alone], abs=1e-5)
    assert [hits[0].id for hits in together] == [4, 18, 4, 30]  # each finds itself first


def test_delete(vector_index: VectorIndex) -> None:
    vecs = unit(3, 3)
    vector_index.upsert([1, 2, 3], vecs)
    vector_index.delete([2])
    vector_index.delete([])  # nothing to do
    assert vector_index.count() == 2
    assert [h.id for h in vector_index.search(vecs[1], 3)] != [] and all(
        h.id != 2 for h in vector_index.search(vecs[1], 3)
    )
    assert vector_index.get([2]) == {}


def test_shape_is_checked(vector_index: VectorIndex) -> None:
    with pytest.raises(ValueError):
        vector_index.upsert([1, 2], unit(1, 4))


def test_collection_is_bound_to_model(vector_index: VectorIndex) -> None:
    vector_index.upsert([1], unit(1, 5))
    uri, name = vector_index.uri, vector_index.collection  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="reembed"):
        open_index(uri, name, model_id="other-model:fp32").ping()
    with pytest.raises(ConfigError):
        open_index(uri, name, dim=DIM * 2).ping()
    # MODEL_ID is in the format from before runtimes were named: those vectors were torch's.
    assert MODEL_ID.endswith(":fp32")
    open_index(uri, name, model_id=MODEL_ID.replace(":fp32", ":torch-fp32")).ping()
    with pytest.raises(ConfigError, match="reembed"):
        open_index(uri, name, model_id=MODEL_ID.replace(":fp32", ":onnx-fp32")).ping()


def test_drop_then_ping_recreates_empty(vector_index: VectorIndex) -> None:
    vector_index.upsert([1, 2], unit(2, 6))
    vector_index.drop()
    vector_index.ping()
    assert vector_index.count() == 0


@pytest.mark.servers
def test_milvus_server_restart(milvus_server: MilvusServer) -> None:
    """Stopped: calls fail fast with the store named. Restarted: the same object recovers."""
    index = open_index(milvus_server.uri, unique("restart_"))
    vecs = unit(2, 7)
    index.upsert([1, 2], vecs)
    with milvus_server.down():
        for call in (index.ping, lambda: index.search(vecs[0], 1), index.count):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as err:
                call()
            assert err.value.store == "vectors"
            assert time.monotonic() - started < 15
    # Milvus reloads the collection for a few seconds after it answers again; the same index
    # object gets through once it has, with no reconnect by hand.
    assert eventually(index.count, timeout=90) == 2  # written before the stop, kept
    assert index.search(vecs[1], 1)[0].id == 2
    index.drop()


def test_flush_policy_follows_the_backend(
    vector_index: VectorIndex, request: pytest.FixtureRequest
) -> None:
    """Milvus Lite is flushed by us (it brute-forces unflushed rows); a server is left alone."""
    vector_index.upsert([1], unit(1, 8))
    lite = request.node.callspec.params["vector_index"] == "lite"
    assert vector_index._lite is lite  # type: ignore[attr-defined]
    assert vector_index._pending == (1 if lite else 0)  # type: ignore[attr-defined]
    vector_index.flush()  # an explicit flush (end of a backfill) works on both
    assert vector_index.count() == 1
