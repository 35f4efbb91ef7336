"""IndexService over SQLite, a local folder and an in-memory index: the consistency protocol."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_search.errors import Conflict, NotFound, StoreUnavailable
from image_search.imaging import content_info
from image_search.indexing import GlobalQuery, IndexService, IngestItem, SearchPage, content_key
from image_search.planning import PlanItem
from image_search.records import ImageRecord, NewImage, object_key_for, thumbnail_key_for
from image_search.stores import Stores
from image_search.stores.metadata import SqlMetadataStore
from image_search.stores.objects import LocalObjectStore
from tests.fakes import DIM, MemoryVectorIndex, unit_vector


@pytest.fixture
def svc(tmp_path: Path) -> IndexService:
    stores = Stores(
        SqlMetadataStore(f"sqlite:///{tmp_path}/meta.db", 5.0),
        LocalObjectStore(tmp_path / "objects"),
        MemoryVectorIndex(DIM, "test-model:fp32"),
    )
    service = IndexService(stores, thumbnail_size=64)
    service.ensure_stores()
    return service


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def unit(seed: int) -> np.ndarray:
    return unit_vector(seed)


def item(seed: int, meta_uuid: str | None = None, with_vector: bool = True) -> IngestItem:
    data = png(seed)
    info = content_info(data)
    new = NewImage(
        meta_uuid=meta_uuid or info.md5,
        hash_code=info.md5,
        sha256=info.sha256,
        file_name=f"{seed}.png",
        file_path=object_key_for(info.sha256, info.ext),
        mime=info.mime,
        size_bytes=info.size,
        width=32,
        height=32,
    )
    return IngestItem(new, data, unit(seed) if with_vector else None)


def counted_row_queries(svc: IndexService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the number of ids of each metadata by_milvus_ids query (a row query)."""
    asked: list[int] = []
    real = svc.stores.metadata.by_milvus_ids

    def counting(ids: Sequence[int], tags: Sequence[str] = ()) -> dict[int, list[ImageRecord]]:
        asked.append(len(ids))
        return real(ids, tags)

    monkeypatch.setattr(svc.stores.metadata, "by_milvus_ids", counting)
    return asked


def test_ingest_makes_row_vector_and_object(svc: IndexService) -> None:
    it = item(1)
    rec = svc.ingest(it)
    assert rec.milvus_id == it.new.milvus_id and rec.milvus_id > 2**31  # exact 64-bit id
    assert svc.counts() == (1, 1)
    assert svc.stores.objects.get(rec.file_path) == it.data
    assert svc.get(rec.meta_uuid).sha256 == hashlib.sha256(it.data).hexdigest()


def test_search_right_after_ingest_finds_it(svc: IndexService) -> None:
    for seed in range(5):
        svc.ingest(item(seed))
    hits = svc.search(unit(3), offset=0, limit=3)
    assert hits[0].record.file_name == "3.png" and hits[0].distance < 1e-4
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert len(svc.search(unit(3), offset=1, limit=2)) == 2
    assert svc.search(unit(3), offset=0, limit=5, threshold=1e-3)[0].record.file_name == "3.png"
    assert len(svc.search(unit(3), offset=0, limit=5, threshold=1e-3)) == 1


def test_same_uuid_conflicts_and_leaves_one_row(svc: IndexService) -> None:
    svc.ingest(item(1, "same"))
    with pytest.raises(Conflict):
        svc.ingest(item(2, "same"))
    assert svc.stores.metadata.count() == 1
    plans = svc.plan([PlanItem("same", "a" * 64), PlanItem("other", item(1).new.sha256),
                      PlanItem("new", "b" * 64)])  # fmt: skip
    assert [p.status for p in plans] == ["conflict", "known", "new"]


def test_same_bytes_two_uuids_share_one_vector(svc: IndexService) -> None:
    a = svc.ingest(item(7, "a"))
    b = svc.ingest(item(7, "b", with_vector=False))  # known content: no second embedding
    assert a.milvus_id == b.milvus_id
    assert svc.counts() == (2, 1)
    hits = svc.search(unit(7), 0, 10)
    assert {h.record.meta_uuid for h in hits} == {"a", "b"}
    # Deleting one keeps the shared vector and object; deleting the last removes both.
    svc.delete("a")
    assert svc.counts() == (1, 1) and svc.stores.objects.exists(a.file_path)
    svc.delete("b")
    assert svc.counts() == (0, 0) and not svc.stores.objects.exists(a.file_path)


def test_delete_really_deletes(svc: IndexService) -> None:
    rec = svc.ingest(item(4))
    svc.thumbnail(rec.meta_uuid)
    thumb = thumbnail_key_for(rec.sha256, 64)
    assert svc.stores.objects.exists(thumb)
    svc.delete(rec.meta_uuid)
    assert svc.counts() == (0, 0)
    assert not svc.stores.objects.exists(rec.file_path) and not svc.stores.objects.exists(thumb)
    with pytest.raises(NotFound):
        svc.delete(rec.meta_uuid)
    with pytest.raises(NotFound):
        svc.get(rec.meta_uuid)


def test_known_content_without_vector_is_refused(svc: IndexService) -> None:
    # A row may only point at content whose vector really exists.
    result = svc.ingest_many([item(9, with_vector=False)])[0]
    assert isinstance(result, StoreUnavailable)
    assert svc.stores.metadata.count() == 0


class Down:
    """A store that is down: every call answers 503."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, _: str) -> object:
        def fail(*a: object, **k: object) -> None:
            raise StoreUnavailable(f"{self.name} unavailable (test)", self.name)

        return fail


@pytest.mark.parametrize("store", ["vectors", "objects"])
def test_failed_write_leaves_nothing_visible_and_a_retry_needs_no_wait(
    svc: IndexService, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = svc.stores
    svc.stores = dataclasses.replace(real, **{store: Down(store)})
    try:
        with pytest.raises(StoreUnavailable):
            svc.ingest(item(11))
        assert real.metadata.count() == 0  # no row: the image never became visible
    finally:
        svc.stores = real
    # The purge of what was written failed too (the store was down): it must not make the
    # retry wait out the lease once the store is back. No wait is allowed here at all.
    monkeypatch.setattr("image_search.indexing.PIN_WAIT_S", 0.0)
    assert svc.ingest(item(11)).meta_uuid == item(11).new.meta_uuid
    assert fully_stored(svc, item(11).new.meta_uuid)
    assert svc.stores.metadata.ref_drift(60) == []


def test_orphan_vectors_are_ignored_by_search(svc: IndexService) -> None:
    svc.ingest(item(1))
    svc.stores.vectors.upsert([12345], unit(2)[None, :])  # a vector whose row never committed
    hits = svc.search(unit(2), 0, 5)
    assert all(h.record.file_name == "1.png" for h in hits)


def test_orphans_among_the_first_hits_are_replaced_by_the_spare_ones(
    svc: IndexService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are read for the first `limit` hits only; spare hits fill in for orphans."""
    for n in range(4):
        svc.ingest(item(n, f"m{n}"))
    svc.stores.vectors.upsert([12345], unit(2)[None, :])  # the best hit for unit(2), no row
    asked = counted_row_queries(svc, monkeypatch)
    hits = svc.search(unit(2), 0, 2)
    assert len(hits) == 2 and hits[0].record.meta_uuid == "m2" and asked == [2, 3]
    asked.clear()
    assert [h.record.meta_uuid for h in svc.search(unit(3), 0, 1)] == ["m3"] and asked == [1]


def test_delete_all(svc: IndexService) -> None:
    for seed in range(3):
        svc.ingest(item(seed))
    assert svc.delete_all() == 3
    assert svc.counts() == (0, 0)
    assert list(svc.stores.objects.keys()) == []


# -- races between processes, made deterministic ------------------------------------------------
# Two IndexServices with their own connections on the same SQLite file and object folder are two
# replicas (or a replica and a job): nothing in-process is shared but the vector index, which is
# one server for every process in production. A hook runs the other writer between two steps.
@pytest.fixture
def other(svc: IndexService, tmp_path: Path) -> IndexService:
    stores = Stores(
        SqlMetadataStore(f"sqlite:///{tmp_path}/meta.db", 5.0),
        LocalObjectStore(tmp_path / "objects"),
        svc.stores.vectors,
    )
    return IndexService(stores, thumbnail_size=64)


def after_vector_upsert(svc: IndexService, action: Callable[[], object]) -> None:
    """Run `action` once, right after svc's next vector upsert (before the row is committed)."""
    vectors = svc.stores.vectors
    real = vectors.upsert

    def hooked(ids: Sequence[int], vecs: np.ndarray) -> None:
        real(ids, vecs)
        vectors.upsert = real  # type: ignore[method-assign]
        action()

    vectors.upsert = hooked  # type: ignore[method-assign]


def fully_stored(svc: IndexService, meta_uuid: str) -> bool:
    rec = svc.get(meta_uuid)
    has_vector = bool(svc.stores.vectors.get([rec.milvus_id]))
    return svc.stores.objects.exists(rec.file_path) and has_vector


def leftovers(svc: IndexService) -> tuple[list[str], int]:
    return sorted(svc.stores.objects.keys()), svc.stores.vectors.count()


def test_delete_of_the_last_row_cannot_strip_an_upload_about_to_commit(
    svc: IndexService, other: IndexService
) -> None:
    svc.ingest(item(5, "first"))
    after_vector_upsert(svc, lambda: other.delete("first"))  # the last row of that content
    rec = svc.ingest(item(5, "second"))  # same bytes: reuses the object, rewrites the vector
    assert svc.stores.metadata.get("first") is None
    assert rec.meta_uuid == "second" and fully_stored(svc, "second")
    svc.delete("second")
    assert leftovers(svc) == ([], 0)


def test_delete_all_during_an_upload_leaves_no_row_and_nothing_behind(
    svc: IndexService, other: IndexService
) -> None:
    svc.ingest(item(1, "old"))
    after_vector_upsert(svc, other.delete_all)
    result = svc.ingest_many([item(2, "in-flight")])[0]
    assert isinstance(result, StoreUnavailable) and result.status == 503  # retryable
    assert svc.stores.metadata.count() == 0
    assert leftovers(svc) == ([], 0)
    assert svc.ingest(item(2, "in-flight")).meta_uuid == "in-flight"  # the retry works


def test_known_content_reused_while_its_last_row_goes(
    svc: IndexService, other: IndexService
) -> None:
    """Planned as known (no vector sent); the last row is deleted before the pin: refused
    with a retryable 503, and nothing stays behind."""
    svc.ingest(item(8, "first"))
    other.delete("first")
    result = svc.ingest_many([item(8, "second", with_vector=False)])[0]
    assert isinstance(result, StoreUnavailable)
    assert svc.stores.metadata.count() == 0 and leftovers(svc) == ([], 0)


def test_thumbnail_written_while_the_last_row_is_deleted_goes_too(
    svc: IndexService, other: IndexService, monkeypatch: pytest.MonkeyPatch
) -> None:
    import image_search.indexing as indexing

    rec = svc.ingest(item(3, "thumbed"))
    real = indexing.thumbnail_jpeg

    def racing(*args: object) -> bytes:
        other.delete("thumbed")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(indexing, "thumbnail_jpeg", racing)
    svc.thumbnail(rec.meta_uuid)
    assert leftovers(svc) == ([], 0)


def test_a_pin_blocks_orphan_deletion_and_a_crashed_pin_is_reclaimed(
    svc: IndexService, other: IndexService
) -> None:
    it = item(6, "slow")
    key = content_key(it.new)
    verdicts: list[bool] = []
    after_vector_upsert(svc, lambda: verdicts.append(other.purge_orphan(key)))
    svc.ingest(it)
    assert verdicts == [False] and fully_stored(svc, "slow")  # reconcile kept its data
    # A writer that died after writing: its pin outlives the lease, then goes with its data.
    crashed = item(7, "crashed")
    svc.stores.metadata.pin([content_key(crashed.new)], lease_s=60)
    svc._write_data([crashed])
    assert not other.purge_orphan(content_key(crashed.new))
    purges = other.stores.metadata.repair_refs(lease_s=0)
    assert [p.key.milvus_id for p in purges] == [crashed.new.milvus_id]
    for p in purges:
        other.purge(p)
    assert leftovers(svc) == ([it.new.file_path], 1)


def test_conflict_releases_the_pin_and_its_fresh_data(svc: IndexService) -> None:
    svc.ingest(item(1, "taken"))
    assert isinstance(svc.ingest_many([item(2, "taken")])[0], Conflict)
    assert leftovers(svc)[1] == 1 and svc.stores.metadata.ref_drift(0) == []
    assert len(leftovers(svc)[0]) == 1  # item 2's object went with its pin


def test_index_plans_where_it_writes(svc: IndexService) -> None:
    """A single upload in one call: a taken meta_uuid is refused, known content keeps the
    vector it has (the one sent along, computed before the plan, is not written)."""
    first = svc.index(item(5, "first"))
    with pytest.raises(Conflict):
        svc.index(item(6, "first"))
    again = item(5, "second")
    again.vector = unit(99)  # a different vector for the same bytes: must not replace it
    second = svc.index(again)
    assert second.milvus_id == first.milvus_id
    stored = svc.stores.vectors.get([first.milvus_id])[first.milvus_id]
    assert np.allclose(stored, item(5).vector)
    assert svc.stores.metadata.count() == 2 and leftovers(svc)[1] == 1


def test_stored_vector_reads_fresh_only_when_the_quick_read_misses(
    svc: IndexService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search by a stored image reads its vector at the searches' consistency (no wait for
    the vector server's time tick); a vector that read misses is read again, fresh."""
    rec = svc.ingest(item(1, "one"))
    vectors = svc.stores.vectors
    real_get = vectors.get
    asked: list[bool] = []

    def lagging_get(ids: Sequence[int], fresh: bool = True) -> dict[int, np.ndarray]:
        asked.append(fresh)
        return real_get(ids) if fresh or len(asked) > 2 else {}

    monkeypatch.setattr(vectors, "get", lagging_get)
    got = svc.stored_vector("one")
    assert asked == [False, True] and np.allclose(got, real_get([rec.milvus_id])[rec.milvus_id])
    svc.stored_vector("one")  # the quick read sees it now: no second read
    assert asked == [False, True, False]


def test_search_stored_finds_the_image_first_in_one_call(svc: IndexService) -> None:
    """The search by a stored image runs where the stores are: its vector, then its hits."""
    for n in range(4):
        svc.ingest(item(n, f"m{n}"))
    hits = svc.search_stored("m2", 0, 3)
    assert len(hits) == 3 and hits[0].record.meta_uuid == "m2" and hits[0].distance < 1e-6
    vector = svc.stores.vectors.get([hits[0].record.milvus_id])[hits[0].record.milvus_id]
    assert [h.record.meta_uuid for h in hits] == [
        h.record.meta_uuid for h in svc.search(vector, 0, 3)
    ]
    with pytest.raises(NotFound):
        svc.search_stored("nope", 0, 3)


def test_searches_made_together_get_what_each_gets_alone(
    svc: IndexService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Indexer's batch of untagged searches: each query's page (or error) is the one it
    gets alone, with one vector search per distinct fetch size and one row query for all."""
    for n in range(8):
        svc.ingest(item(n, f"m{n}"))
    svc.ingest(item(5, "m5-again", with_vector=False))  # two rows behind one vector
    queries = [
        GlobalQuery(SearchPage(0, 3), vector=unit(5)),
        GlobalQuery(SearchPage(1, 2), vector=unit(2)),
        GlobalQuery(SearchPage(0, 3, threshold=1e-3), vector=unit(6)),
        GlobalQuery(SearchPage(0, 3), meta_uuid="m4"),
        GlobalQuery(SearchPage(0, 3), meta_uuid="nope"),
        GlobalQuery(SearchPage(2, 30), vector=unit(1)),
    ]
    alone = []
    for q in queries:
        p = q.page
        try:
            alone.append(
                svc.search_stored(q.meta_uuid, p.offset, p.limit, p.threshold)
                if q.vector is None
                else svc.search(q.vector, p.offset, p.limit, p.threshold)
            )
        except NotFound as exc:
            alone.append(exc)
    vectors = svc.stores.vectors
    assert isinstance(vectors, MemoryVectorIndex)
    vectors.batches.clear()
    row_queries = counted_row_queries(svc, monkeypatch)
    md = svc.stores.metadata
    uuid_reads: list[list[str]] = []
    real_get_many = md.get_many
    monkeypatch.setattr(md, "get", lambda uuid: pytest.fail(f"one row read for {uuid}"))
    monkeypatch.setattr(md, "get_many", lambda u: uuid_reads.append(list(u)) or real_get_many(u))
    together = svc.search_global(queries)
    assert isinstance(together[4], NotFound) and isinstance(alone[4], NotFound)
    assert [r for i, r in enumerate(together) if i != 4] == [
        r for i, r in enumerate(alone) if i != 4
    ]
    first, thresholded, deep = together[0], together[2], together[5]
    assert isinstance(first, list) and isinstance(thresholded, list) and isinstance(deep, list)
    assert {h.record.meta_uuid for h in first[:2]} == {"m5", "m5-again"}
    assert len(thresholded) == 1 and len(deep) == 7  # 9 rows, from the third on
    assert sorted(vectors.batches) == [1, 4]  # fetch 19 for four queries, 48 for the last
    assert len(row_queries) == 1
    assert uuid_reads == [["m4", "nope"]]  # the stored images' rows in one query
