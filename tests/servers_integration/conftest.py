"""One Serve app on MariaDB + S3 + a Milvus server, shared by the tests here, and helpers."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pymilvus import MilvusClient

from tests.servers import METADATA_DB, S3_BUCKET, MariaDB, MilvusServer, MotoS3


@pytest.fixture(scope="package")
def prod_app(
    make_app: Any, production_overrides: dict[str, Any], mariadb: MariaDB, s3_server: MotoS3,
    milvus_server: MilvusServer,
) -> Iterator[str]:  # fmt: skip
    """Base URL of the real Serve graph deployed on the three servers.

    Deleted when this package's tests are done: the test cluster has 2 CPUs, and an app left
    behind would starve the apps that later tests deploy.
    """
    # Set up before any per-test check, so a server that died in an earlier package is
    # started again here rather than leaving the app unready.
    for server in (mariadb, s3_server, milvus_server):
        server.ensure_running()
    yield make_app("servers", production_overrides)
    make_app.delete("servers")


@pytest.fixture
def api(prod_app: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=prod_app, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def unique_photo(photos: dict[str, bytes]) -> Callable[[str, int], bytes]:
    """A real photo re-encoded with a per-test seed: content no other test uploads."""

    def make(name: str, seed: int) -> bytes:
        img = Image.open(io.BytesIO(photos[name])).convert("RGB")
        arr = np.asarray(img).copy()
        # One 8x8 block (a whole JPEG block, so no two seeds quantize to the same bytes):
        # new content, the same picture.
        arr[:8, :8] = [seed % 256, (seed // 256) % 256, 7]
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    return make


class Backends:
    """Look into the servers directly, bypassing the service."""

    def __init__(self, mariadb: MariaDB, s3: MotoS3, milvus: MilvusServer, collection: str):
        self.mariadb, self.s3, self.milvus, self.collection = mariadb, s3, milvus, collection

    def row(self, meta_uuid: str) -> tuple[Any, ...] | None:
        rows = self.mariadb.sql(
            f"SELECT id, sha256, milvus_id, file_path FROM image WHERE meta_uuid = '{meta_uuid}'",
            db=METADATA_DB,
        )
        return rows[0] if rows else None

    def object_exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.s3.client().stat_object(S3_BUCKET, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return False
            raise
        return True

    def vector_exists(self, milvus_id: int) -> bool:
        client = MilvusClient(uri=self.milvus.uri, timeout=10)
        try:
            return bool(client.get(self.collection, ids=[milvus_id], timeout=10))
        finally:
            client.close()


@pytest.fixture(scope="session")
def backends(
    mariadb: MariaDB,
    s3_server: MotoS3,
    milvus_server: MilvusServer,
    production_overrides: dict[str, Any],
) -> Backends:
    return Backends(mariadb, s3_server, milvus_server, production_overrides["stores.collection"])
