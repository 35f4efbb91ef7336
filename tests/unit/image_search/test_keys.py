"""The key store: hashed secrets, scopes, revocation, hostile input; the security settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from image_search.config import load_settings
from image_search.errors import BadRequest, ConfigError, NotFound, StoreUnavailable
from image_search.keys import SCOPES, KeyStore, allows, parse_key


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    s = KeyStore(f"sqlite:///{tmp_path}/meta.db")
    s.create_schema()
    s.create_schema()  # idempotent: every process that opens the store calls it
    return s


def test_created_key_verifies_with_its_scope_and_only_its_hash_is_stored(store: KeyStore) -> None:
    new = store.create("ci bot", "write")
    key_id, secret = parse_key(new.key) or ("", "")
    assert new.key.startswith(f"ise_{new.info.key_id}_") and key_id == new.info.key_id
    assert store.verify(new.key) == "write"
    with store.engine.connect() as conn:
        rows = [tuple(map(str, r)) for r in conn.execute(text("SELECT * FROM api_key"))]
    assert len(rows) == 1 and not any(secret in col for col in rows[0])
    listed = store.list_keys()
    assert [(k.key_id, k.name, k.scope, k.last4, k.active) for k in listed] == [
        (new.info.key_id, "ci bot", "write", new.key[-4:], True)
    ]


def test_two_keys_differ_and_a_wrong_secret_is_refused(store: KeyStore) -> None:
    a, b = store.create("a", "read"), store.create("b", "admin")
    assert a.key != b.key and a.info.key_id != b.info.key_id
    assert (store.verify(a.key), store.verify(b.key)) == ("read", "admin")
    # a's id with b's secret: the lookup finds a, the constant-time comparison refuses it.
    forged = f"ise_{a.info.key_id}_{b.key.split('_', 2)[2]}"  # the secret may hold "_"
    assert parse_key(forged) is not None and store.verify(forged) is None


def test_revoked_key_is_refused_and_listed_as_revoked(store: KeyStore) -> None:
    new = store.create("laptop", "read")
    first = store.revoke(new.info.key_id)
    assert first.revoked_at is not None and store.verify(new.key) is None
    assert store.revoke(new.info.key_id).revoked_at == first.revoked_at  # the first time stays
    assert [k.active for k in store.list_keys()] == [False]
    with pytest.raises(NotFound):
        store.revoke("0123456789ab")


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "ise_",
        "Bearer x",
        "ise_zzzzzzzzzzzz_" + "a" * 43,  # id not hex
        "ise_0123456789ab_" + "a" * 42,  # secret too short
        "ise_0123456789ab_" + "é" * 43,  # non-ASCII
        "ise_0123456789ab_" + "\x00" * 43,
        "x" * 1_000_000,  # huge
    ],
)
def test_malformed_keys_are_refused_without_raising(store: KeyStore, presented: str) -> None:
    assert store.verify(presented) is None


def test_well_formed_unknown_key_is_refused(store: KeyStore) -> None:
    assert store.verify("ise_0123456789ab_" + "a" * 43) is None


def test_scopes_are_ordered() -> None:
    assert SCOPES == ("read", "write", "admin")
    granted = {(have, need) for have in SCOPES for need in SCOPES if allows(have, need)}
    assert granted == {("read", "read"), ("write", "read"), ("write", "write"),
                       ("admin", "read"), ("admin", "write"), ("admin", "admin")}  # fmt: skip


def test_bad_scope_or_name_is_a_bad_request(store: KeyStore) -> None:
    with pytest.raises(BadRequest, match="scope"):
        store.create("x", "root")
    with pytest.raises(BadRequest, match="name"):
        store.create("", "read")
    with pytest.raises(BadRequest, match="name"):
        store.create("x" * 101, "read")
    assert store.list_keys() == []


def test_unreachable_database_is_store_unavailable(tmp_path: Path) -> None:
    store = KeyStore(f"sqlite:///{tmp_path}/no/such/dir/meta.db")
    with pytest.raises(StoreUnavailable) as err:
        store.create_schema()
    assert err.value.status == 503 and err.value.store == "metadata"


def test_keys_are_required_by_default_except_on_loopback_in_development() -> None:
    assert not load_settings(environ={}).keys_required
    assert load_settings(environ={}, overrides={"server.host": "0.0.0.0"}).keys_required
    loopback_but_on = {"server.host": "127.0.0.1", "security.require_keys": True}
    assert load_settings(environ={}, overrides=loopback_but_on).keys_required


def test_production_refuses_keys_off() -> None:
    env = {"ISE__ENVIRONMENT": "production", "ISE__SERVER__ADMIN_TOKEN": "a-long-random-token"}
    assert load_settings(environ=env).keys_required
    with pytest.raises(ConfigError, match="require_keys"):
        load_settings(environ={**env, "ISE__SECURITY__REQUIRE_KEYS": "false"})


def test_cors_origins_must_be_origins() -> None:
    ok = load_settings(environ={}, overrides={"security.cors_origins": ["https://A.example/"]})
    assert ok.security.cors_origins == ["https://a.example"]
    for bad in (["*"], ["https://a.example/path"], ["a.example"]):
        with pytest.raises(ConfigError, match="cors_origins"):
            load_settings(environ={}, overrides={"security.cors_origins": bad})
