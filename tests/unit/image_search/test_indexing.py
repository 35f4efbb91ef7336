"""IndexService over SQLite, a local folder and an in-memory index: the consistency protocol."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_search.errors import Conflict, NotFound, StoreUnavailable
from image_search.imaging import content_info
from image_search.indexing import IndexService, IngestItem
from image_search.planning import PlanItem
from image_search.records import NewImage, object_key_for, thumbnail_key_for
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


def test_failed_vector_write_leaves_nothing_visible(svc: IndexService) -> None:
    class Down:
        name = "vectors"

        def __getattr__(self, _: str) -> object:
            def fail(*a: object, **k: object) -> None:
                raise StoreUnavailable("vector index unavailable (test)", "vectors")

            return fail

    real = svc.stores.vectors
    svc.stores = Stores(svc.stores.metadata, svc.stores.objects, Down())  # type: ignore[arg-type]
    try:
        with pytest.raises(StoreUnavailable):
            svc.ingest(item(11))
        assert svc.stores.metadata.count() == 0  # no row: the image never became visible
    finally:
        svc.stores = Stores(svc.stores.metadata, svc.stores.objects, real)


def test_orphan_vectors_are_ignored_by_search(svc: IndexService) -> None:
    svc.ingest(item(1))
    svc.stores.vectors.upsert([12345], unit(2)[None, :])  # a vector whose row never committed
    hits = svc.search(unit(2), 0, 5)
    assert all(h.record.file_name == "1.png" for h in hits)


def test_delete_all(svc: IndexService) -> None:
    for seed in range(3):
        svc.ingest(item(seed))
    assert svc.delete_all() == 3
    assert svc.counts() == (0, 0)
    assert list(svc.stores.objects.keys()) == []
