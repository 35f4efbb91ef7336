"""`image-search keys`: create prints the key once, list never shows it, revoke ends it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main
from image_search.keys import KeyStore


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"stores:\n  metadata_uri: sqlite:///{tmp_path}/meta.db\n", encoding="utf-8")
    return cfg


def keys(config: Path, *args: str) -> int:
    return main(["keys", "--config", str(config), *args])


def test_create_list_revoke(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert keys(config, "create", "--scope", "write", "--name", "ci bot") == 0
    key = capsys.readouterr().out.strip()
    assert "\n" not in key  # the key alone on stdout, for KEY=$(image-search keys create ...)
    store = KeyStore(f"sqlite:///{config.parent}/meta.db")
    assert store.verify(key) == "write"
    key_id = store.list_keys()[0].key_id

    assert keys(config, "list") == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "ci bot" in listing and key[-4:] in listing
    secret = key.split("_", 2)[2]  # the secret itself may hold "_": split on the first two only
    assert key not in listing and secret[:20] not in listing

    assert keys(config, "revoke", key_id) == 0
    assert store.verify(key) is None
    assert keys(config, "list") == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if key_id in line)
    assert row.split()[4] != "-"  # the revoked column holds a time now


def test_mistakes_exit_non_zero(config: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert keys(config, "revoke", "0123456789ab") == 1
    assert "no key with id" in caplog.text
    assert keys(config, "create", "--scope", "read", "--name", "bad;name") == 1
    with pytest.raises(SystemExit):
        keys(config, "create", "--scope", "root", "--name", "x")
    with pytest.raises(SystemExit):
        keys(config, "create", "--scope", "read")  # --name is required
