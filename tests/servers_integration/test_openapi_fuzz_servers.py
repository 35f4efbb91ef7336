"""The OpenAPI fuzz run against the graph on MariaDB, the S3 server and a Milvus server: what
the embedded run checks, on the production stores (their errors and limits differ: MySQL's
columns and integer ranges, S3 keys, Milvus's expressions). An app with a database, bucket and
collection of its own, so that the delete-all the fuzz sends reaches no other test's images
(objects are named by their content: another app's copy of a photo is the same object)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import AppFactory
from tests.openapi_fuzz import fuzz_openapi
from tests.servers import MariaDB

pytestmark = [pytest.mark.servers, pytest.mark.integration]
logger = logging.getLogger(__name__)
EXAMPLES_PER_OPERATION = 12  # fewer than on the embedded stores: each app costs CI minutes
BUDGET_S = 180


def test_openapi_fuzz_on_the_servers_finds_no_server_error(
    make_app: AppFactory, production_overrides: dict[str, Any], mariadb: MariaDB,
    photos: dict[str, bytes],
) -> None:  # fmt: skip
    own = uuid.uuid4().hex[:8]
    overrides = {
        **production_overrides,
        "stores.metadata_uri": mariadb.create_database(f"ise_fuzz_{own}"),
        "stores.objects_uri": f"s3://ise-fuzz-{own}",
        "stores.collection": f"image_vectors_fuzz_{own}",
    }
    url = make_app("fuzz_servers", overrides)
    try:
        for name in ("coffee", "rocket"):  # something for the id routes to find
            files = {"file": (f"{name}.jpg", photos[name])}
            assert httpx.post(url + "/meta/image/file", files=files, timeout=60).status_code == 200
        calls, failures = fuzz_openapi(url, EXAMPLES_PER_OPERATION, BUDGET_S)
        logger.warning("openapi fuzz on the servers: %d requests over %d operations",
                       sum(calls.values()), len(calls))  # fmt: skip
        assert not failures, "\n\n".join(failures[:5])
        assert len(calls) >= 12 and sum(calls.values()) >= 12 * 6, calls
    finally:
        make_app.delete("fuzz_servers")
