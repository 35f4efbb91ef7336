"""MetadataStore contract: SQLite and MariaDB (MySQL) through the same SQLAlchemy models."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from datetime import UTC, datetime, timedelta

import pytest

from image_search.errors import Conflict, StoreUnavailable
from image_search.records import NewImage, id_parts, milvus_id_for, object_key_for
from image_search.stores import MetadataStore, open_metadata
from image_search.stores import metadata as metadata_module
from image_search.stores.base import LIVE, PURGING, ContentKey, PinLost, TagCount
from tests.contract.conftest import settings, unique
from tests.servers import MariaDB


def new_image(n: int, meta_uuid: str | None = None, content: int | None = None) -> NewImage:
    raw = f"content-{n if content is None else content}".encode()
    sha = hashlib.sha256(raw).hexdigest()
    return NewImage(
        meta_uuid=meta_uuid or f"uuid-{n}",
        hash_code=hashlib.md5(raw).hexdigest(),
        sha256=sha,
        file_name=f"猫-🐱-{n}.jpg",  # 4-byte UTF-8: needs utf8mb4 on MySQL
        file_path=object_key_for(sha, "jpg"),
        mime="image/jpeg",
        size_bytes=5 * 1024**3 + n,  # over 32 bits
        width=640,
        height=480,
    )


def test_add_get_roundtrip(metadata_store: MetadataStore) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)
    new = new_image(1)
    rec = metadata_store.add(new)
    assert rec.id > 0
    got = metadata_store.get("uuid-1")
    assert got == rec
    assert got.file_name == "猫-🐱-1.jpg" and got.size_bytes == new.size_bytes
    assert got.milvus_id == milvus_id_for(new.sha256) and got.milvus_id > 2**32
    assert got.created_at.tzinfo is not None and before <= got.created_at <= datetime.now(UTC)
    assert metadata_store.get("nope") is None
    metadata_store.create_schema()  # idempotent: a second replica starting up
    assert metadata_store.count() == 1


def test_duplicate_meta_uuid_conflicts(metadata_store: MetadataStore) -> None:
    metadata_store.add(new_image(1, "same"))
    with pytest.raises(Conflict):
        metadata_store.add(new_image(2, "same"))
    assert metadata_store.count() == 1
    assert metadata_store.existing_uuids(["same", "other"]) == {"same"}


def test_get_many_returns_the_rows_found_by_uuid(metadata_store: MetadataStore) -> None:
    recs = [metadata_store.add(new_image(n)) for n in range(3)]
    got = metadata_store.get_many(["uuid-2", "nope", "uuid-0", "uuid-2"])
    assert got == {"uuid-2": recs[2], "uuid-0": recs[0]}
    assert got["uuid-0"] == metadata_store.get("uuid-0")
    assert metadata_store.get_many([]) == {}


def test_list_newest_first_with_paging(metadata_store: MetadataStore) -> None:
    for n in range(5):
        metadata_store.add(new_image(n))
    assert [r.meta_uuid for r in metadata_store.page(0, 3)] == ["uuid-4", "uuid-3", "uuid-2"]
    assert [r.meta_uuid for r in metadata_store.page(3, 10)] == ["uuid-1", "uuid-0"]
    assert metadata_store.page(10, 10) == []
    assert metadata_store.count() == 5


def test_cursor_pages_follow_the_ids_and_ignore_earlier_deletes(
    metadata_store: MetadataStore,
) -> None:
    md = metadata_store
    for n in range(7):
        md.add(new_image(n))
    first = md.page(0, 3)
    assert [r.meta_uuid for r in first] == ["uuid-6", "uuid-5", "uuid-4"]
    # A delete on a page already shown does not shift the next one (OFFSET would skip a row).
    md.delete("uuid-5")
    second = md.page(0, 3, before=first[-1].id)
    assert [r.meta_uuid for r in second] == ["uuid-3", "uuid-2", "uuid-1"]
    assert [r.meta_uuid for r in md.page(0, 3, before=second[-1].id)] == ["uuid-0"]
    assert [r.meta_uuid for r in md.page(1, 2, before=first[0].id)] == ["uuid-3", "uuid-2"]
    assert md.page(0, 3, before=min(r.id for r in second) - 1000) == []


def test_the_kept_count_follows_every_write(metadata_store: MetadataStore) -> None:
    """count() reads a counter kept by the writes themselves; recount() agrees with it."""
    md = metadata_store
    for n in range(4):
        md.add(new_image(n, content=n % 2))
    with pytest.raises(Conflict):
        md.add(new_image(9, "uuid-1"))
    assert md.count() == 4
    md.delete("uuid-0")
    md.delete("nope")
    assert md.count() == 3
    assert md.recount() == (3, 3)
    md.delete_all()
    assert md.count() == 0 and md.recount() == (0, 0)
    md.add(new_image(5))
    assert md.count() == 1


def test_rows_written_around_the_store_are_counted_again(metadata_store: MetadataStore) -> None:
    """A database from before the counter gets one at start; a bulk load, at recount()."""
    from sqlalchemy import delete as sql_delete

    from image_search.stores.metadata import Image, RowCounter

    md = metadata_store
    for n in range(3):
        md.add(new_image(n))
    engine = md.engine  # type: ignore[attr-defined]
    RowCounter.__table__.drop(engine)
    md.create_schema()
    md.create_schema()  # a second replica: idempotent
    assert md.count() == 3
    with engine.begin() as conn:  # rows removed around the store (a bulk tool)
        conn.execute(sql_delete(Image).where(Image.meta_uuid == "uuid-1"))
    assert md.count() == 3
    assert md.recount() == (3, 2) and md.count() == 2


def test_iter_content_walks_every_content_in_pages(
    metadata_store: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import image_search.stores.metadata as sql

    monkeypatch.setattr(sql, "CONTENT_PAGE", 2)
    md = metadata_store
    for n in range(7):
        md.add(new_image(n, content=n % 5))  # 5 contents, two of them shared
    got = list(md.iter_content())
    want = {(key_of(new_image(c)).sha256, key_of(new_image(c)).milvus_id,
             key_of(new_image(c)).file_path) for c in range(5)}  # fmt: skip
    assert len(got) == 5 and set(got) == want
    assert [m for _, m, _ in got] == sorted(m for _, m, _ in got)
    # A part of the id space at a time (reconcile's parts), in the same pages.
    parts = [list(md.iter_content(within)) for within in id_parts(1)]
    for (lo, hi), rows in zip(id_parts(1), parts, strict=True):
        assert all(lo <= m < hi for _, m, _ in rows)
        assert [m for _, m, _ in rows] == sorted(m for _, m, _ in rows)
    assert sorted(r for rows in parts for r in rows) == sorted(got)
    assert max(len(rows) for rows in parts) < len(got)


def test_shared_content_references_and_delete(metadata_store: MetadataStore) -> None:
    a = metadata_store.add(new_image(1, "a", content=7))
    b = metadata_store.add(new_image(2, "b", content=7))
    c = metadata_store.add(new_image(3, "c", content=8))
    assert metadata_store.references(a.sha256) == 2
    grouped = metadata_store.by_milvus_ids([a.milvus_id, c.milvus_id, 12345])
    assert [r.meta_uuid for r in grouped[a.milvus_id]] == ["a", "b"]
    assert [r.meta_uuid for r in grouped[c.milvus_id]] == ["c"]
    assert metadata_store.by_milvus_ids([]) == {}
    assert sorted(metadata_store.iter_content()) == sorted(
        [(a.sha256, a.milvus_id, a.file_path), (c.sha256, c.milvus_id, c.file_path)]
    )
    deleted = metadata_store.delete("a")
    assert deleted is not None and deleted.record.meta_uuid == "a"
    assert deleted.purge is None  # "b" still references the content
    assert metadata_store.delete("a") is None
    assert metadata_store.references(b.sha256) == 1
    wipe = metadata_store.delete_all()
    assert wipe.rows == 2 and {k.milvus_id for k in wipe.contents} == {a.milvus_id, c.milvus_id}
    assert metadata_store.count() == 0


def test_ping(metadata_store: MetadataStore) -> None:
    metadata_store.ping()


# -- the content table: pins, commits, purges ---------------------------------------------------
def key_of(new: NewImage) -> ContentKey:
    return ContentKey(new.milvus_id, new.sha256, new.file_path)


def age(store: MetadataStore, milvus_id: int, seconds: float) -> None:
    """Backdate a content row, as if its writer or purger had stopped that long ago."""
    from sqlalchemy import update

    from image_search.stores.metadata import Content

    engine = store.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(update(Content).where(Content.milvus_id == milvus_id).values(
            updated_at=datetime.now(UTC) - timedelta(seconds=seconds)))  # fmt: skip


def test_last_reference_gone_starts_exactly_one_purge(metadata_store: MetadataStore) -> None:
    a, b = new_image(1, "a", content=7), new_image(2, "b", content=7)
    tokens = metadata_store.pin([key_of(a), key_of(b)], lease_s=60)  # two pins, one content
    token = tokens[a.milvus_id]
    metadata_store.commit(a, token)
    assert metadata_store.release(a.milvus_id, token) is None  # "a" still references it
    removal = metadata_store.delete("a")
    assert removal is not None and removal.purge is not None  # refs and pins are now 0
    assert metadata_store.content_state(a.milvus_id) == PURGING
    # While purging, writers of that content are held off, and so is another purger.
    assert metadata_store.pin([key_of(b)], lease_s=60) == {}
    assert metadata_store.hold(a.milvus_id) is None
    assert metadata_store.claim(key_of(a), lease_s=60) is None
    assert metadata_store.end_purge(removal.purge.token, [a.milvus_id]) == 1
    assert metadata_store.content_state(a.milvus_id) is None
    assert b.milvus_id in metadata_store.pin([key_of(b)], lease_s=60)  # a new generation


def test_commit_fails_once_delete_all_invalidated_the_pin(metadata_store: MetadataStore) -> None:
    a = new_image(1, "a")
    token = metadata_store.pin([key_of(a)], lease_s=60)[a.milvus_id]
    wipe = metadata_store.delete_all()
    assert [k.milvus_id for k in wipe.contents] == [a.milvus_id]
    with pytest.raises(PinLost):
        metadata_store.commit(a, token)
    with pytest.raises(PinLost):
        metadata_store.release(a.milvus_id, token)
    assert metadata_store.count() == 0
    assert metadata_store.end_purge(wipe.token) == 1


def test_conflict_keeps_the_pin_and_changes_nothing(metadata_store: MetadataStore) -> None:
    metadata_store.add(new_image(1, "same"))
    other = new_image(2, "same")
    token = metadata_store.pin([key_of(other)], lease_s=60)[other.milvus_id]
    with pytest.raises(Conflict):
        metadata_store.commit(other, token)
    purge = metadata_store.release(other.milvus_id, token)  # the pin was still there
    assert purge is not None and purge.key.file_path == other.file_path
    assert metadata_store.count() == 1 and metadata_store.ref_drift(60) == []


def test_claims_never_take_live_or_pinned_content(metadata_store: MetadataStore) -> None:
    live, pinned = new_image(1, "live"), new_image(2, "pinned")
    metadata_store.add(live)
    token = metadata_store.pin([key_of(pinned)], lease_s=60)[pinned.milvus_id]
    assert metadata_store.claim(key_of(live), lease_s=0) is None
    assert metadata_store.claim(key_of(pinned), lease_s=0) is None
    metadata_store.commit(pinned, token)
    orphan = metadata_store.claim(ContentKey(4242), lease_s=60)  # a lone vector
    assert orphan is not None and metadata_store.content_state(4242) == PURGING
    assert metadata_store.pin([ContentKey(4242, "f" * 64, "x")], lease_s=60) == {}
    metadata_store.end_purge(orphan.token)
    assert metadata_store.content_state(4242) is None


def test_a_stale_purge_is_taken_over(metadata_store: MetadataStore) -> None:
    a = new_image(1, "a")
    crashed = metadata_store.claim(key_of(a), lease_s=60)
    assert crashed is not None
    assert metadata_store.pin([key_of(a)], lease_s=60) == {}  # young: wait for it
    age(metadata_store, a.milvus_id, 120)
    token = metadata_store.pin([key_of(a)], lease_s=60)[a.milvus_id]  # old: its purger died
    assert metadata_store.content_state(a.milvus_id) == LIVE
    metadata_store.commit(a, token)
    assert metadata_store.end_purge(crashed.token) == 0  # the crashed purger lost its claim
    assert metadata_store.get("a") is not None and metadata_store.ref_drift(60) == []


def test_an_abandoned_purge_is_taken_over_at_once(metadata_store: MetadataStore) -> None:
    a = new_image(1, "a")
    failed = metadata_store.claim(key_of(a), lease_s=60)
    assert failed is not None
    assert metadata_store.abandon_purge("another-token", [a.milvus_id]) == 0  # not its claim
    assert metadata_store.pin([key_of(a)], lease_s=60) == {}
    assert metadata_store.abandon_purge(failed.token, [a.milvus_id]) == 1  # a store was down
    token = metadata_store.pin([key_of(a)], lease_s=60)[a.milvus_id]  # no lease to wait out
    metadata_store.commit(a, token)
    assert metadata_store.get("a") is not None and metadata_store.ref_drift(60) == []


def test_stale_pins_and_drifted_refs_are_repaired(metadata_store: MetadataStore) -> None:
    kept, crashed = new_image(1, "kept"), new_image(2, "crashed")
    metadata_store.add(kept)
    metadata_store.pin([key_of(crashed)], lease_s=60)  # a writer that died before committing
    assert metadata_store.ref_drift(lease_s=60) == []  # young pins are writers in flight
    age(metadata_store, crashed.milvus_id, 120)
    drift = metadata_store.ref_drift(lease_s=60)
    assert [(d.key.milvus_id, d.pins, d.rows) for d in drift] == [(crashed.milvus_id, 1, 0)]
    purges = metadata_store.repair_refs(lease_s=60)
    assert [p.key.milvus_id for p in purges] == [crashed.milvus_id]
    metadata_store.end_purge(purges[0].token)
    assert metadata_store.ref_drift(lease_s=60) == []
    assert metadata_store.content_state(kept.milvus_id) == LIVE


def test_existing_rows_are_counted_when_the_content_table_is_new(
    metadata_store: MetadataStore,
) -> None:
    """A database from before the content table: its rows keep their data."""
    from image_search.stores.metadata import Content

    for n, content in ((1, 7), (2, 7), (3, 8)):
        metadata_store.add(new_image(n, content=content))
    engine = metadata_store.engine  # type: ignore[attr-defined]
    Content.__table__.drop(engine)
    metadata_store.create_schema()
    assert metadata_store.ref_drift(lease_s=60) == []
    shared = new_image(1, content=7)
    assert metadata_store.delete("uuid-1").purge is None  # type: ignore[union-attr]
    removal = metadata_store.delete("uuid-2")
    assert removal is not None and removal.purge is not None
    assert removal.purge.key == key_of(shared)


def test_concurrent_writers_in_separate_connections_keep_exact_counts(
    metadata_store: MetadataStore,
) -> None:
    """Pools of their own, as replicas have: pins, commits, releases and deletes interleave."""
    from concurrent.futures import ThreadPoolExecutor

    uri = metadata_store.uri  # type: ignore[attr-defined]
    stores = [open_metadata(settings(metadata_uri=uri, connect_timeout_s=2.0)) for _ in range(4)]

    def work(w: int) -> None:
        st = stores[w]
        for i in range(15):
            new = new_image(100 * w + i, f"w{w}-{i}", content=i % 3)
            deadline, tokens = time.monotonic() + 20, {}
            while not tokens and time.monotonic() < deadline:  # another worker's purge
                tokens = st.pin([key_of(new)], lease_s=60)
            token = tokens[new.milvus_id]
            if i % 4 == 3:
                purge = st.release(new.milvus_id, token)
            else:
                st.commit(new, token)
                purge = st.delete(new.meta_uuid).purge if i % 2 else None  # type: ignore[union-attr]
            if purge is not None:
                st.end_purge(purge.token, [purge.key.milvus_id])

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(4)))
    finally:
        for st in stores:
            st.engine.dispose()  # type: ignore[attr-defined]
    assert metadata_store.ref_drift(lease_s=60) == []
    kept, rows = metadata_store.recount()
    assert kept == rows == metadata_store.count()
    for content in range(3):
        mid = new_image(0, content=content).milvus_id
        rows = len(metadata_store.by_milvus_ids([mid]).get(mid, []))
        assert metadata_store.content_state(mid) == (LIVE if rows else None)


# -- MariaDB only -------------------------------------------------------------------------------
@pytest.mark.servers
def test_mysql_schema_types_indexes_and_charset(mariadb: MariaDB) -> None:
    db = unique("schema_")
    store = open_metadata(settings(metadata_uri=mariadb.create_database(db)))
    store.create_schema()
    try:
        cols = dict(mariadb.sql(
            "SELECT column_name, column_type FROM information_schema.columns "
            f"WHERE table_schema='{db}' AND table_name='image'"
        ))  # fmt: skip
        assert cols["id"].startswith("bigint") and cols["milvus_id"].startswith("bigint")
        assert cols["size_bytes"].startswith("bigint")
        (charset,) = mariadb.sql(
            "SELECT ccsa.character_set_name FROM information_schema.tables t JOIN "
            "information_schema.collation_character_set_applicability ccsa "
            "ON ccsa.collation_name = t.table_collation "
            f"WHERE t.table_schema='{db}' AND t.table_name='image'"
        )[0]
        assert charset == "utf8mb4"
        indexes = {(name, col, unique_) for name, col, unique_ in mariadb.sql(
            "SELECT index_name, column_name, non_unique = 0 FROM information_schema.statistics "
            f"WHERE table_schema='{db}' AND table_name='image'"
        )}  # fmt: skip
        assert ("ix_image_sha256", "sha256", 0) in indexes
        assert ("ix_image_hash_code", "hash_code", 0) in indexes
        assert any(col == "meta_uuid" and uniq == 1 for _, col, uniq in indexes)
        # The lookups the service makes really use those indexes.
        plan = mariadb.sql("EXPLAIN SELECT id FROM image WHERE sha256 = 'x'", db=db)
        assert "ix_image_sha256" in str(plan)
    finally:
        store.engine.dispose()  # type: ignore[attr-defined]
        mariadb.sql(f"DROP DATABASE `{db}`")


@pytest.mark.servers
def test_mysql_restart_is_survived_by_the_pool(mariadb: MariaDB) -> None:
    """Pooled connections that died with the server are replaced, not used."""
    db = unique("restart_")
    store = open_metadata(settings(metadata_uri=mariadb.create_database(db), connect_timeout_s=2))
    store.create_schema()
    try:
        store.add(new_image(1))
        with mariadb.down():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as err:
                store.count()
            assert err.value.store == "metadata" and time.monotonic() - started < 5
        assert store.count() == 1  # the very same store object, no reconnect by hand
        store.add(new_image(2))
        assert store.count() == 2
    finally:
        store.engine.dispose()  # type: ignore[attr-defined]
        mariadb.sql(f"DROP DATABASE `{db}`")


@pytest.mark.servers
def test_idle_connections_are_pinged_busy_ones_fail_once(
    mariadb: MariaDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping per query: a connection idle for PING_IDLE_S is pinged, so a restart while the
    pool sat idle costs no failed read; one in busy use fails one read, then none."""
    db = unique("ping_")
    store = open_metadata(settings(metadata_uri=mariadb.create_database(db), connect_timeout_s=2))
    store.create_schema()
    try:
        store.add(new_image(1))
        last_use = time.monotonic()
        mariadb.restart()
        time.sleep(max(0.0, metadata_module.PING_IDLE_S - (time.monotonic() - last_use)))
        assert store.count() == 1  # pinged, found dead, replaced: no error
        monkeypatch.setattr(metadata_module, "PING_IDLE_S", 3600.0)  # every use "busy"
        mariadb.restart()
        with pytest.raises(StoreUnavailable):
            store.count()  # the dead connection is used unpinged, once
        assert store.count() == 1  # the disconnect replaced the pool
    finally:
        store.engine.dispose()  # type: ignore[attr-defined]
        mariadb.sql(f"DROP DATABASE `{db}`")


# -- tags ---------------------------------------------------------------------------------------
def with_tags(new: NewImage, *tags: str) -> NewImage:
    return dataclasses.replace(new, tags=tags)


def test_tags_are_indexed_filtered_and_counted(metadata_store: MetadataStore) -> None:
    md = metadata_store
    md.add(with_tags(new_image(1), "猫", "red"))
    md.add(with_tags(new_image(2), "red", "Red"))  # exact match: case counts
    md.add(with_tags(new_image(3, content=1), "red"))  # shares image 1's content
    md.add(new_image(4))
    assert md.tag_counts(10) == [TagCount("red", 3), TagCount("Red", 1), TagCount("猫", 1)]
    assert md.tag_counts(1) == [TagCount("red", 3)]
    assert [r.meta_uuid for r in md.page(0, 2, ["red"])] == ["uuid-3", "uuid-2"]
    assert [r.meta_uuid for r in md.page(2, 2, ["red"])] == ["uuid-1"]
    assert [r.meta_uuid for r in md.page(0, 9, ["red", "猫"])] == ["uuid-1"]  # every tag
    assert md.count(["red"]) == 3 and md.count(["Red"]) == 1 and md.count(["none"]) == 0
    shared = new_image(1).milvus_id
    assert sorted(md.tagged_contents(["red"], 2) or []) == sorted({shared, new_image(2).milvus_id})
    assert md.tagged_contents(["red"], 1) is None  # over the bound: the caller filters instead
    assert md.tagged_contents(["猫"], 5) == [shared]
    rows = md.by_milvus_ids([shared], ["猫"])
    assert [r.meta_uuid for r in rows[shared]] == ["uuid-1"]
    assert len(md.by_milvus_ids([shared])[shared]) == 2


def test_tags_go_with_their_rows(metadata_store: MetadataStore) -> None:
    md = metadata_store
    md.add(with_tags(new_image(1), "red"))
    md.add(with_tags(new_image(2), "red", "blue"))
    md.delete("uuid-1")
    assert md.tag_counts(10) == [TagCount("blue", 1), TagCount("red", 1)]
    md.add(with_tags(new_image(5, "uuid-1"), "green"))  # the meta_uuid again: its new tags only
    assert md.tag_counts(10) == [TagCount("blue", 1), TagCount("green", 1), TagCount("red", 1)]
    md.delete_all()
    assert md.tag_counts(10) == [] and md.count(["red"]) == 0


def test_an_existing_database_gets_its_tag_index_once(metadata_store: MetadataStore) -> None:
    """A database from before image_tag: create_schema makes it from the JSON column."""
    from image_search.stores.metadata import ImageTag

    md = metadata_store
    md.add(with_tags(new_image(1), "red"))
    md.add(with_tags(new_image(2), "red", "猫"))
    md.add(new_image(3))
    ImageTag.__table__.drop(md.engine)  # type: ignore[attr-defined]
    md.create_schema()
    md.create_schema()  # a second replica: idempotent
    assert md.tag_counts(10) == [TagCount("red", 2), TagCount("猫", 1)]
    assert md.get("uuid-2").tags == ("red", "猫")  # type: ignore[union-attr]
    md.delete("uuid-2")
    assert md.tag_counts(10) == [TagCount("red", 1)]


def test_the_tag_fill_starts_above_the_rows_it_settled(metadata_store: MetadataStore) -> None:
    """Every start fills tags only above a watermark (settled rows: older than SETTLED_S), so
    a start costs the same at a million rows; rows above it (an older version writing during
    a rolling upgrade) are still filled."""
    from sqlalchemy import delete as sql_delete
    from sqlalchemy import insert as sql_insert
    from sqlalchemy import update as sql_update

    from image_search.stores.metadata import TAGS_CHECKED, Image, ImageTag, RowCounter

    md = metadata_store
    engine = md.engine  # type: ignore[attr-defined]
    old = [md.add(with_tags(new_image(n), "red")) for n in range(3)]
    with engine.begin() as conn:  # written an hour ago
        conn.execute(sql_update(Image).values(created_at=datetime.now(UTC) - timedelta(hours=1)))
    md.create_schema()
    with engine.connect() as conn:
        mark = conn.execute(RowCounter.__table__.select().where(RowCounter.name == TAGS_CHECKED))
        assert mark.one().value == old[-1].id
        # Below the watermark, the fill no longer looks: a tag row removed there stays gone.
        conn.execute(sql_delete(ImageTag).where(ImageTag.image_id == old[0].id))
        # Above it, a row with tags and no tag rows (an older version's write) is filled.
        fresh = new_image(9)
        conn.execute(sql_insert(Image).values(
            meta_uuid="by-old-version", hash_code=fresh.hash_code, sha256=fresh.sha256,
            milvus_id=fresh.milvus_id, file_name="x.jpg", file_path=fresh.file_path,
            mime="image/jpeg", size_bytes=1, width=1, height=1, tags='["blue"]',
            created_at=datetime.now(UTC), updated_at=datetime.now(UTC)))  # fmt: skip
        conn.commit()
    md.create_schema()
    assert md.tag_counts(10) == [TagCount("red", 2), TagCount("blue", 1)]


def test_the_longest_tags_the_edge_accepts_fit_the_column(metadata_store: MetadataStore) -> None:
    """check_tags bounds tags by the length of their stored JSON: the longest accepted (4-byte
    characters included) fit MySQL's column, one more character is a 400 before any write."""
    from image_search.errors import BadRequest
    from image_search.records import TAGS_MAX_JSON, check_tags, tags_json

    tags = [f"🐱猫{i:02d}" + "x" * 20 for i in range(40)]
    while len(tags_json(tags)) < TAGS_MAX_JSON:
        tags[-1] += "y"
    tags[-1] = tags[-1][: len(tags[-1]) - (len(tags_json(tags)) - TAGS_MAX_JSON)]
    assert len(tags_json(tags)) == TAGS_MAX_JSON
    accepted = check_tags(tags)
    rec = metadata_store.add(with_tags(new_image(1), *accepted))
    assert metadata_store.get(rec.meta_uuid).tags == accepted  # type: ignore[union-attr]
    assert metadata_store.count(["🐱猫00" + "x" * 20]) == 1
    with pytest.raises(BadRequest):
        check_tags([*tags[:-1], tags[-1] + "z"])
