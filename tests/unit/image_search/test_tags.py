"""Tags: parsing, the image_tag index in SQLite, and tag-filtered search (IndexService)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from image_search.errors import BadRequest
from image_search.indexing import IndexService, IngestItem
from image_search.records import TAG_MAX_CHARS, TAGS_MAX_COUNT, parse_tags
from image_search.stores import Stores
from image_search.stores.base import TagCount
from image_search.stores.metadata import ImageTag, SqlMetadataStore
from image_search.stores.objects import LocalObjectStore
from tests.fakes import DIM, MemoryVectorIndex
from tests.unit.image_search.test_indexing import item


def tagged(seed: int, *tags: str, meta_uuid: str | None = None) -> IngestItem:
    it = item(seed, meta_uuid)
    it.new = dataclasses.replace(it.new, tags=tuple(tags))
    return it


def near(seed: int, k: float) -> np.ndarray:
    """A unit vector on the arc from axis 0 towards axis 1: distance to axis 0 grows with k."""
    v = np.zeros(DIM, dtype=np.float32)
    v[0], v[1] = np.cos(k), np.sin(k)
    return v


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


def ingest_line(svc: IndexService, n: int, tag_every: int) -> None:
    """n images on one arc, image i at angle i/100 from axis 0; every tag_every-th tagged."""
    for i in range(n):
        it = tagged(i, *(("red",) if i % tag_every == 0 else ()), meta_uuid=f"img-{i}")
        it.vector = near(i, i / 100)
        svc.ingest(it)


# -- parsing ------------------------------------------------------------------------------------
def test_parse_tags_normalises_and_takes_repeated_values() -> None:
    assert parse_tags(" cat, dog ,,cat") == ("cat", "dog")
    assert parse_tags(["cat,dog", "red", " "]) == ("cat", "dog", "red")
    assert parse_tags(None) == () and parse_tags([]) == () and parse_tags(",") == ()
    assert parse_tags("Cat,cat") == ("Cat", "cat")  # exact match: case is kept


@pytest.mark.parametrize(
    "raw",
    [
        "x" * (TAG_MAX_CHARS + 1),
        ",".join(str(i) for i in range(TAGS_MAX_COUNT + 1)),
        "bell\x07",
        ["ok", "new\nline"],
    ],
)
def test_bad_tags_are_a_400(raw: str | list[str]) -> None:
    with pytest.raises(BadRequest):
        parse_tags(raw)


# -- the index ----------------------------------------------------------------------------------
def test_tags_are_indexed_with_the_row_and_go_with_it(svc: IndexService) -> None:
    md = svc.stores.metadata
    svc.ingest(tagged(1, "red", "shoe", "red ", meta_uuid="a"))
    svc.ingest(tagged(2, "red", meta_uuid="b"))
    svc.ingest(tagged(3, meta_uuid="c"))
    assert md.get("a").tags == ("red", "shoe")  # type: ignore[union-attr]
    assert md.tag_counts(10) == [TagCount("red", 2), TagCount("shoe", 1)]
    assert [r.meta_uuid for r in md.page(0, 10, ["red"])] == ["b", "a"]
    assert [r.meta_uuid for r in md.page(0, 10, ["red", "shoe"])] == ["a"]  # all of them
    assert md.count(["red"]) == 2 and md.count(["red", "nope"]) == 0 and md.count() == 3
    svc.delete("a")
    assert md.tag_counts(10) == [TagCount("red", 1)]
    svc.delete_all()
    assert md.tag_counts(10) == []
    with md.engine.connect() as conn:  # type: ignore[attr-defined]
        assert conn.execute(text("SELECT count(*) FROM image_tag")).scalar_one() == 0


def test_an_existing_database_gets_its_tags_indexed_once(svc: IndexService) -> None:
    md = svc.stores.metadata
    engine = md.engine  # type: ignore[attr-defined]
    svc.ingest(tagged(1, "red", meta_uuid="a"))
    svc.ingest(tagged(2, "blue", "red", meta_uuid="b"))
    # A database from before image_tag, with a tag longer than the index takes.
    ImageTag.__table__.drop(engine)  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(text("UPDATE image SET tags = :t WHERE meta_uuid = 'a'"),
                     {"t": json.dumps(["red", "x" * (TAG_MAX_CHARS + 1)])})  # fmt: skip
    md.create_schema()
    assert md.tag_counts(10) == [TagCount("red", 2), TagCount("blue", 1)]
    md.create_schema()  # a second replica, or a restart: nothing twice
    assert md.tag_counts(10) == [TagCount("red", 2), TagCount("blue", 1)]
    assert md.get("a").tags == ("red", "x" * (TAG_MAX_CHARS + 1))  # type: ignore[union-attr]


# -- search -------------------------------------------------------------------------------------
def test_tagged_search_is_restricted_to_the_tag_and_exact(svc: IndexService) -> None:
    ingest_line(svc, 30, tag_every=3)
    vectors: MemoryVectorIndex = svc.stores.vectors  # type: ignore[assignment]
    hits = svc.search(near(0, 0.05), offset=0, limit=4, tags=("red",))
    assert [h.record.meta_uuid for h in hits] == ["img-6", "img-3", "img-9", "img-0"]
    assert all("red" in h.record.tags for h in hits)
    assert vectors.searches[-1] is not None and len(vectors.searches[-1]) == 10  # restricted
    page2 = svc.search(near(0, 0.05), offset=4, limit=4, tags=("red",))
    assert [h.record.meta_uuid for h in page2] == ["img-12", "img-15", "img-18", "img-21"]
    assert svc.search(near(0, 0.0), 0, 5, tags=("nope",)) == []
    assert svc.search(near(0, 0.0), 0, 5, threshold=0.0001, tags=("red",))[0].record.meta_uuid \
        == "img-0"  # fmt: skip


def test_above_the_bound_it_over_fetches_and_pages_stay_right(svc: IndexService) -> None:
    ingest_line(svc, 60, tag_every=5)
    vectors: MemoryVectorIndex = svc.stores.vectors  # type: ignore[assignment]
    svc.tag_prefilter_max = 3  # 12 tagged images: above it
    got = [h.record.meta_uuid for off in (0, 3, 6, 9)
           for h in svc.search(near(0, 0.0), offset=off, limit=3, tags=("red",))]  # fmt: skip
    assert got == [f"img-{i}" for i in range(0, 60, 5)]
    assert all(s is None for s in vectors.searches[-4:])  # unrestricted: filtered after


def test_rows_sharing_a_vector_are_filtered_one_by_one(svc: IndexService) -> None:
    first = tagged(1, "red", meta_uuid="tagged")
    svc.ingest(first)
    svc.ingest(tagged(1, meta_uuid="plain"))  # the same bytes, so the same vector, no tag
    hits = svc.search(first.vector, 0, 10, tags=("red",))  # type: ignore[arg-type]
    assert [h.record.meta_uuid for h in hits] == ["tagged"]
    assert len(svc.search(first.vector, 0, 10)) == 2  # type: ignore[arg-type]
