"""Every store implementation behind one fixture per protocol, for the contract suites."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from image_search.config import Settings, StoreSettings
from image_search.stores import (
    MetadataStore,
    ObjectStore,
    VectorIndex,
    milvus_index,
    open_metadata,
    open_objects,
)
from image_search.stores.lite_server import ensure_lite_server, stop_lite_server
from tests.servers import MariaDB, MilvusServer, MotoS3, free_port

DIM = 8
MODEL_ID = "contract-model:fp32"
SERVER = pytest.mark.servers


def settings(**stores: Any) -> Settings:
    return Settings(stores=StoreSettings(**stores))


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# -- metadata -----------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=SERVER)])
def metadata_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    db = ""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path}/meta.db"
    else:
        server: MariaDB = request.getfixturevalue("mariadb")
        db = unique("contract_")
        uri = server.create_database(db)
    store = open_metadata(settings(metadata_uri=uri, connect_timeout_s=2.0))
    store.create_schema()
    yield store
    store.engine.dispose()  # type: ignore[attr-defined]
    if db:
        server.sql(f"DROP DATABASE `{db}`")


# -- objects ------------------------------------------------------------------------------------
def s3_settings(server: MotoS3, bucket: str, **extra: Any) -> Settings:
    return settings(
        objects_uri=f"s3://{bucket}",
        s3_endpoint=server.endpoint,
        s3_access_key=server.access_key,
        s3_secret_key=server.secret_key,
        s3_region="us-east-1",
        connect_timeout_s=2.0,
        **extra,
    )


@pytest.fixture(params=["local", pytest.param("s3", marks=SERVER)])
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_objects(settings(objects_uri=f"file://{tmp_path}/objects"))
    server: MotoS3 = request.getfixturevalue("s3_server")
    return open_objects(s3_settings(server, unique("contract-")))


# -- vectors ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lite_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Milvus Lite's own gRPC server (the embedded default), started like the service does."""
    data = tmp_path_factory.mktemp("lite") / "vectors.db"
    try:
        yield ensure_lite_server(data, free_port())
    finally:
        stop_lite_server(data)


def vector_uri(request: pytest.FixtureRequest, kind: str) -> str:
    if kind == "lite":
        return str(request.getfixturevalue("lite_server_uri"))
    server: MilvusServer = request.getfixturevalue("milvus_server")
    return server.uri


def open_index(uri: str, collection: str, model_id: str = MODEL_ID, dim: int = DIM) -> VectorIndex:
    # Server URIs go straight to pymilvus, exactly as the service opens them.
    s = settings(vectors_uri=uri, collection=collection, connect_timeout_s=3.0)
    return milvus_index(s, dim, model_id, collection)


_shared_indexes: dict[str, VectorIndex] = {}


@pytest.fixture(params=["lite", pytest.param("milvus", marks=SERVER)])
def vector_index(request: pytest.FixtureRequest) -> VectorIndex:
    """One collection per implementation, emptied before each test.

    Creating, indexing and loading a collection takes seconds on a Milvus server; emptying
    one is cheap, and every test starts from zero rows all the same.
    """
    index = _shared_indexes.get(request.param)
    if index is None:
        index = open_index(vector_uri(request, request.param), unique("contract_"))
        _shared_indexes[request.param] = index
    index.ping()  # creates the collection (again, after a test dropped it)
    index.delete(list(index.ids()))
    assert index.count() == 0
    return index
