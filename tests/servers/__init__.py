"""Pytest plugin: real MariaDB, S3 (moto) and Milvus servers on free loopback ports, per session.

Each server runs from its own temporary data directory, is started once per session and stopped
at the end, and can be stopped and restarted in between (`with server.down(): ...`) for fault
tests. Readiness is polled, never slept for. A missing server binary fails the tests that need
it (`make test` installs them all); ISE_SKIP_MISSING_SERVERS=1 turns that into a skip for a
developer who has not installed them.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from deployments.cluster import free_port
from tests.servers.mariadb_server import METADATA_DB, MariaDB
from tests.servers.milvus import MilvusServer
from tests.servers.process import VENV_BIN, ManagedServer, _need, eventually
from tests.servers.s3 import S3_BUCKET, MotoS3

__all__ = [
    "METADATA_DB",
    "S3_BUCKET",
    "VENV_BIN",
    "ManagedServer",
    "MariaDB",
    "MilvusServer",
    "MotoS3",
    "eventually",
    "free_port",
    "mariadb",
    "milvus_server",
    "production_overrides",
    "s3_server",
]


# -- fixtures -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _running(server: ManagedServer) -> Iterator[ManagedServer]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """A MariaDB server; `.uri(db)`, `.create_database(db)`, `.sql(...)`, `.down()`."""
    _need(
        shutil.which("mariadbd") is not None and shutil.which("mariadb-install-db") is not None,
        "mariadbd not installed (apt-get install mariadb-server; `make test` does it)",
    )
    with _running(MariaDB(tmp_path_factory.mktemp("mariadb"))) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto's S3 server; `.endpoint`, `.client()` (a minio client), `.down()`."""
    _need((VENV_BIN / "moto_server").exists(), "moto_server missing (pip install 'moto[server]')")
    with _running(MotoS3(tmp_path_factory.mktemp("s3"))) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """A standalone Milvus server (gRPC at `.uri`); `.down()` stops it for a fault test."""
    try:
        import milvus  # noqa: F401
    except ImportError:
        _need(False, "the `milvus` package is missing (pip install milvus==2.3.5)")
    with _running(MilvusServer(tmp_path_factory.mktemp("milvus"))) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(autouse=True)
def _servers_alive(request: pytest.FixtureRequest) -> None:
    """Before each test that uses a server: the server is running (see `ensure_running`)."""
    for name in ("mariadb", "s3_server", "milvus_server"):
        if name in request.fixturenames:
            server: ManagedServer = request.getfixturevalue(name)
            server.ensure_running()


@pytest.fixture(scope="session")
def production_overrides(
    mariadb: MariaDB, s3_server: MotoS3, milvus_server: MilvusServer
) -> dict[str, Any]:
    """Settings overrides (dotted keys) that point an app at the three servers."""
    return {
        "stores.metadata_uri": mariadb.uri(METADATA_DB),
        "stores.objects_uri": f"s3://{S3_BUCKET}",
        "stores.s3_endpoint": s3_server.endpoint,
        "stores.s3_access_key": s3_server.access_key,
        "stores.s3_secret_key": s3_server.secret_key,
        "stores.s3_secure": False,
        "stores.s3_region": "us-east-1",
        "stores.vectors_uri": milvus_server.uri,
        "stores.collection": "image_vectors_servers",
        "stores.index_type": "HNSW",
        "stores.consistency_level": "Strong",
        "stores.connect_timeout_s": 3.0,
    }
