"""KeyStore contract: the api_key table on SQLite and on MariaDB (the production database),
beside the image tables on the same database: create, verify, list, revoke, hostile keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from image_search.keys import KeyStore
from tests.contract.conftest import SERVER, unique
from tests.servers import MariaDB


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=SERVER)])
def key_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path}/meta.db"
    else:
        server: MariaDB = request.getfixturevalue("mariadb")
        uri = server.create_database(unique("keys_"))
    store = KeyStore(uri, timeout_s=2.0)
    store.create_schema()
    store.create_schema()  # every process that opens the store calls it
    yield store
    store.close()


def test_a_key_lives_verifies_by_scope_and_dies_on_revoke(key_store: KeyStore) -> None:
    reader, admin = key_store.create("ci bot", "read"), key_store.create("ops@host:1", "admin")
    assert key_store.verify(reader.key) == "read" and key_store.verify(admin.key) == "admin"
    listed = {k.key_id: (k.name, k.scope, k.active) for k in key_store.list_keys()}
    assert listed == {reader.info.key_id: ("ci bot", "read", True),
                      admin.info.key_id: ("ops@host:1", "admin", True)}  # fmt: skip
    key_store.revoke(reader.info.key_id)
    assert key_store.verify(reader.key) is None and key_store.verify(admin.key) == "admin"
    assert [k.active for k in key_store.list_keys() if k.key_id == reader.info.key_id] == [False]


@pytest.mark.parametrize(
    "presented",
    [
        "ise_0123456789ab_" + "a" * 43,  # well formed, unknown
        "ise_0123456789ab_" + "é" * 43,  # non-ASCII (a 500 once, on the token path)
        "ise_0123456789ab_" + "\x00" * 43,
        "ise_0123456789ab_" + "🐱" * 43,  # 4-byte UTF-8, where MySQL's utf8 would choke
        "x" * 100_000,
    ],
)
def test_hostile_keys_are_refused_without_raising(key_store: KeyStore, presented: str) -> None:
    key_store.create("someone", "write")
    assert key_store.verify(presented) is None
