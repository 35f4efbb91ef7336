"""The content race of tests/integration/test_content_stress.py on MariaDB, S3 and Milvus.

Row locks, deadlock retries and lock waits are MariaDB's own (SQLite serialises every writer),
so the protocol is raced here too: three processes ingest, delete, wipe and reconcile the same
content on a database, bucket and Milvus server of this test's own. Its own Milvus: a busy
2-core machine can starve the standalone server's embedded etcd until it reports itself
unhealthy, and that must not take the other tests' server down with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from image_search.config import load_settings
from tests.conftest import ROOT
from tests.integration.test_content_stress import race_then_check
from tests.servers import MariaDB, MilvusServer

pytestmark = [pytest.mark.servers, pytest.mark.integration]


@pytest.fixture
def own_milvus(tmp_path: Path) -> Iterator[MilvusServer]:
    server = MilvusServer(tmp_path / "milvus")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_processes_racing_on_shared_content_on_the_servers(
    mariadb: MariaDB, own_milvus: MilvusServer, production_overrides: dict[str, Any]
) -> None:
    overrides = {
        **production_overrides,
        "stores.vectors_uri": own_milvus.uri,
        # Delete-all wipes whole stores: this test's own, never the app's of the other tests.
        "stores.metadata_uri": mariadb.create_database("content_race"),
        "stores.objects_uri": "s3://content-race",
        "stores.collection": "content_race",
    }
    settings = load_settings(ROOT / "config.yaml", environ={}, overrides=overrides)
    totals = race_then_check(settings)
    assert totals["retry"] + totals["conflict"] > 0, totals  # the processes did collide
