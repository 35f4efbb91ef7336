"""The search parameters MilvusVectorIndex sends, for any page size, and when it flushes
Milvus Lite's tail of writes (no Milvus needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from image_search.stores.base import VectorHit
from image_search.stores.vectors import (
    FLUSH_AFTER_S,
    FLUSH_ROWS,
    MAX_TOP_K,
    SEARCHED_FLUSH_ROWS,
    MilvusVectorIndex,
)


def index(index_type: str = "HNSW", **search_params: Any) -> MilvusVectorIndex:
    # Connects lazily: nothing is contacted until a call needs the client.
    return MilvusVectorIndex("http://127.0.0.1:1", "c", 4, "m", index_type=index_type,
                             search_params=search_params)  # fmt: skip


class RecordingClient:
    """Stands in for MilvusClient: records each search and answers one hit."""

    def __init__(self) -> None:
        self.searches: list[dict[str, Any]] = []

    def search(self, collection: str, **kwargs: Any) -> list[list[dict[str, Any]]]:
        self.searches.append(kwargs)
        return [[{"id": 1, "distance": 0.25}]]


@pytest.mark.parametrize(
    ("configured", "limit", "ef"),
    [
        (128, 10, 128),  # the configured ef is the floor: recall as configured
        (128, 128, 128),
        (128, 300, 300),  # was 128: a Milvus server refuses ef below top-k
        (128, 129, 129),
        (64, MAX_TOP_K, MAX_TOP_K),
        (128, MAX_TOP_K + 1, MAX_TOP_K),  # refused for its top-k anyway; ef stays in range
        (20000, 300, 20000),  # a larger configured ef is kept
    ],
)
def test_hnsw_ef_is_never_below_the_hits_asked_for(configured: int, limit: int, ef: int) -> None:
    assert index(ef=configured).search_params_for(limit) == {"ef": ef}


def test_hnsw_without_a_configured_ef_gets_the_limit() -> None:
    assert index().search_params_for(300) == {"ef": 300}


def test_other_parameters_and_other_index_types_are_left_alone() -> None:
    assert index(ef=128, extra=1).search_params_for(300) == {"ef": 300, "extra": 1}
    assert index("IVF_FLAT", nprobe=16).search_params_for(300) == {"nprobe": 16}
    assert index("FLAT").search_params_for(300) == {}


def test_the_configured_parameters_are_not_changed() -> None:
    idx = index(ef=128)
    idx.search_params_for(300)
    assert idx.search_params == {"ef": 128}


def test_search_sends_the_adjusted_ef() -> None:
    idx = index(ef=128)
    client = RecordingClient()
    idx._client = client  # type: ignore[assignment]
    hits = idx.search(np.ones(4, dtype=np.float32), 300)
    assert [(h.id, h.distance) for h in hits] == [(1, 0.25)]
    (call,) = client.searches
    assert call["limit"] == 300
    assert call["search_params"] == {"metric_type": "L2", "params": {"ef": 300}}
    # Named: asked for no field, Milvus Lite sends every hit's vector along.
    assert call["output_fields"] == ["id"]


def test_search_many_is_one_request_with_a_list_per_row() -> None:
    idx = index(ef=128)
    client = RecordingClient()  # answers one row only: the others come back empty
    idx._client = client  # type: ignore[assignment]
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert idx.search_many(rows, 26) == [[VectorHit(1, 0.25)], [], []]
    (call,) = client.searches
    assert call["data"] == rows.tolist() and call["limit"] == 26 and call["filter"] == ""
    assert call["search_params"] == {"metric_type": "L2", "params": {"ef": 128}}
    assert idx.search_many(np.zeros((0, 4), dtype=np.float32), 26) == []
    assert len(client.searches) == 1  # no rows, no request


def test_a_lite_path_gets_no_keepalive_pings_and_a_server_keeps_them(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Milvus Lite's server answers keepalive pings with GOAWAY "too_many_pings" (every call
    on the connection then fails, seen in CI); a server keeps gRPC's keepalives. Both get a
    channel of their own, so a dropped client reconnects on a new transport."""
    from image_search.config import Settings
    from image_search.stores import _milvus_options, lite_server
    from image_search.stores.vectors import NO_KEEPALIVE, OWN_CHANNEL

    def options(uri: str) -> dict[str, Any]:
        return _milvus_options(Settings.model_validate({"stores": {"vectors_uri": uri}}))

    remote = MilvusVectorIndex(collection="c", dim=4, model_id="m", **options("http://h:1"))
    assert remote.grpc_options == OWN_CHANNEL
    # A path: Milvus Lite, served from this machine (its start is not what is tested here).
    monkeypatch.setattr(lite_server, "ensure_lite_server", lambda path, port: "http://l:2")
    local = MilvusVectorIndex(collection="c", dim=4, model_id="m",
                              **options(str(tmp_path / "v.db")))  # fmt: skip
    assert local.uri == "http://l:2"
    assert local.grpc_options == {**OWN_CHANNEL, **NO_KEEPALIVE}
    assert local.grpc_options["grpc.keepalive_permit_without_calls"] == 0


class TailClient(RecordingClient):
    """Also records upserts and flushes; `during_flush` runs inside a flush (a write racing it)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.during_flush: Any = None

    def upsert(self, collection: str, rows: list[dict[str, Any]], **kwargs: Any) -> None:
        pass

    def flush(self, collection: str, **kwargs: Any) -> None:
        self.flushes += 1
        if self.during_flush is not None:
            write, self.during_flush = self.during_flush, None
            write()


def lite_index() -> tuple[MilvusVectorIndex, TailClient]:
    idx = index(ef=128)
    client = TailClient()
    idx._client = client  # type: ignore[assignment]
    idx._lite = True  # Milvus Lite: the tail is ours to flush
    return idx, client


def rows(n: int) -> tuple[list[int], np.ndarray]:
    return list(range(n)), np.ones((n, 4), dtype=np.float32)


def test_a_tail_searches_pay_for_is_flushed_at_the_next_check() -> None:
    idx, client = lite_index()
    idx.upsert(*rows(SEARCHED_FLUSH_ROWS))
    idx.flush_if_due()
    assert client.flushes == 0  # writes still arriving, nobody searching: left to grow
    idx.search(np.ones(4, dtype=np.float32), 10)
    assert client.flushes == 0  # the search itself never waits on a flush
    idx.flush_if_due()
    assert client.flushes == 1 and idx._pending == 0
    idx.search(np.ones(4, dtype=np.float32), 10)  # nothing pending: nothing to note
    idx.upsert(*rows(1))
    idx.flush_if_due()
    assert client.flushes == 1  # the search came before this row, not while it waited


def test_a_short_tail_waits_for_a_quiet_second_even_when_searched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from image_search.stores import vectors

    idx, client = lite_index()
    idx.upsert(*rows(SEARCHED_FLUSH_ROWS - 1))
    idx.search(np.ones(4, dtype=np.float32), 10)
    idx.flush_if_due()
    assert client.flushes == 0  # cheaper for searches to brute-force than to flush
    later = vectors.time.monotonic() + FLUSH_AFTER_S
    monkeypatch.setattr(vectors.time, "monotonic", lambda: later)
    idx.flush_if_due()
    assert client.flushes == 1 and idx._pending == 0


def test_a_full_tail_is_flushed_by_the_write_and_a_server_is_left_alone() -> None:
    idx, client = lite_index()
    idx.upsert(*rows(FLUSH_ROWS - 1))
    assert client.flushes == 0
    idx.upsert(*rows(1))
    assert client.flushes == 1 and idx._pending == 0
    server, on_server = lite_index()
    server._lite = False
    server.upsert(*rows(FLUSH_ROWS))
    server.search(np.ones(4, dtype=np.float32), 10)
    server.flush_if_due()
    assert on_server.flushes == 0 and server._pending == 0


def test_rows_written_while_a_flush_runs_stay_pending() -> None:
    idx, client = lite_index()
    idx.upsert(*rows(SEARCHED_FLUSH_ROWS))
    client.during_flush = lambda: idx.upsert(*rows(3))
    idx.flush()
    assert idx._pending == 3  # it may have missed them: a later flush takes them


def test_a_drop_during_a_flush_leaves_no_negative_count() -> None:
    idx, client = lite_index()
    idx.upsert(*rows(SEARCHED_FLUSH_ROWS))
    client.during_flush = lambda: setattr(idx, "_pending", 0)  # what drop() does to the count
    idx.flush()
    assert idx._pending == 0


class WriteClient(TailClient):
    """Records which write each call made, and its rows."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, list[dict[str, Any]]]] = []

    def upsert(self, collection: str, rows: list[dict[str, Any]], **kwargs: Any) -> None:
        self.writes.append(("upsert", rows))

    def insert(self, collection: str, rows: list[dict[str, Any]], **kwargs: Any) -> None:
        self.writes.append(("insert", rows))


def test_insert_new_inserts_the_same_rows_an_upsert_writes_and_counts_them_in_the_tail() -> None:
    idx = index(ef=128)
    client = WriteClient()
    idx._client = client  # type: ignore[assignment]
    idx._lite = True
    ids, vecs = [7, 9], np.arange(8, dtype=np.float32).reshape(2, 4)
    idx.upsert(ids, vecs)
    idx.insert_new(ids, vecs)
    (kind_a, rows_a), (kind_b, rows_b) = client.writes
    assert (kind_a, kind_b) == ("upsert", "insert")  # never a delete record for a new key
    assert rows_a == rows_b == [{"id": 7, "vector": [0.0, 1.0, 2.0, 3.0]},
                                {"id": 9, "vector": [4.0, 5.0, 6.0, 7.0]}]  # fmt: skip
    assert idx._pending == 4  # Milvus Lite's tail: inserted rows wait for a flush alike
    idx.insert_new([], np.zeros((0,), dtype=np.float32))  # nothing: no call, no shape error
    assert len(client.writes) == 2
    with pytest.raises(ValueError, match="shape"):
        idx.insert_new([1, 2], np.zeros((2, 3), dtype=np.float32))
    assert len(client.writes) == 2
