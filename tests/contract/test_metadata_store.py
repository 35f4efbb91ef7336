"""MetadataStore contract: SQLite and MariaDB (MySQL) through the same SQLAlchemy models."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta

import pytest

from image_search.errors import Conflict, StoreUnavailable
from image_search.records import NewImage, milvus_id_for, object_key_for
from image_search.stores import MetadataStore, open_metadata
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


def test_list_newest_first_with_paging(metadata_store: MetadataStore) -> None:
    for n in range(5):
        metadata_store.add(new_image(n))
    assert [r.meta_uuid for r in metadata_store.page(0, 3)] == ["uuid-4", "uuid-3", "uuid-2"]
    assert [r.meta_uuid for r in metadata_store.page(3, 10)] == ["uuid-1", "uuid-0"]
    assert metadata_store.page(10, 10) == []
    assert metadata_store.count() == 5


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
    assert deleted is not None and deleted.meta_uuid == "a"
    assert metadata_store.delete("a") is None
    assert metadata_store.references(b.sha256) == 1
    assert metadata_store.delete_all() == 2
    assert metadata_store.count() == 0


def test_ping(metadata_store: MetadataStore) -> None:
    metadata_store.ping()


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
    """pool_pre_ping: pooled connections that died with the server are replaced, not used."""
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
