"""Faults: each server stopped in turn under the running app, then restarted; no redeploy.

While a store is down, writes and reads that need it answer 503 with the store named, /readyz
says which store is not ready, and nothing half-written becomes visible. Once the server is
back, the same deployment serves again by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.servers import ManagedServer, eventually

pytestmark = [pytest.mark.servers, pytest.mark.integration]
logger = logging.getLogger(__name__)

# (server fixture, store name in the 503 envelope, a seed for content no other test uploads)
FAULTS = [
    ("mariadb", "metadata", 301),
    ("s3_server", "objects", 302),
    ("milvus_server", "vectors", 303),
]


def upload(api: httpx.Client, data: bytes, meta_uuid: str) -> httpx.Response:
    return api.post(
        "/meta/image/file", files={"file": ("f.jpg", data)}, data={"meta_uuid": meta_uuid}
    )


def search(api: httpx.Client, data: bytes) -> httpx.Response:
    return api.post("/sample/file", files={"file": ("q.jpg", data)}, data={"limit": 5})


def snapshot(api: httpx.Client) -> tuple[dict[str, Any], list[str]]:
    counts = api.get("/meta/image/count").raise_for_status().json()
    listed = api.get("/meta/image", params={"limit": 100}).raise_for_status().json()
    return {k: counts[k] for k in ("image_count", "vector_count")}, [
        d["meta_uuid"] for d in listed["data"]
    ]


def outcome(name: str, r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    seen = {"status": r.status_code, "store": body.get("store"), "message": body["message"][:160]}
    seen["seconds"] = round(r.elapsed.total_seconds(), 2)
    if "checks" in body:
        seen["checks"] = {k: v[:100] for k, v in body["checks"].items()}
    logger.info("fault %s -> %s", name, seen)
    return seen


def assert_unavailable(r: httpx.Response, store: str, what: str) -> None:
    seen = outcome(what, r)
    assert seen["status"] == 503 and seen["store"] == store, seen
    assert r.json()["succeed"] is False


@pytest.mark.parametrize(("server_name", "store", "seed"), FAULTS, ids=[f[1] for f in FAULTS])
def test_store_outage_and_recovery(
    api: httpx.Client,
    request: pytest.FixtureRequest,
    unique_photo: Callable[[str, int], bytes],
    server_name: str,
    store: str,
    seed: int,
) -> None:
    server: ManagedServer = request.getfixturevalue(server_name)
    kept, fresh = unique_photo("coffee", seed), unique_photo("astronaut", seed)
    kept_uuid, fresh_uuid = f"kept-{store}", f"fresh-{store}"
    assert upload(api, kept, kept_uuid).status_code == 200
    kept_file = api.get(f"/meta/image/{kept_uuid}").json()["data"]["file_relative_url"]
    before = snapshot(api)

    with server.down():
        ready = api.get("/readyz")
        outcome(f"{store}: GET /readyz", ready)
        checks = ready.json()["checks"]
        assert ready.status_code == 503 and ready.json()["message"] == "not ready"
        assert checks[store] != "ok" and all(v == "ok" for k, v in checks.items() if k != store)

        assert_unavailable(upload(api, fresh, fresh_uuid), store, f"{store}: upload")
        found = search(api, kept)
        if store == "objects":
            # Search needs no image bytes: it keeps answering; the bytes themselves do not.
            outcome(f"{store}: search", found)
            assert found.status_code == 200 and found.json()["data"][0]["meta_uuid"] == kept_uuid
            assert_unavailable(api.get(kept_file), store, f"{store}: GET file")
        else:
            assert_unavailable(found, store, f"{store}: search")

    # Back up: the same deployment recovers by itself (bounded wait for reconnects/reloads).
    eventually(lambda: api.get("/readyz").raise_for_status(), timeout=90)
    # A restarted Milvus reports the collection loaded a moment before queries run on it.
    assert eventually(lambda: snapshot(api), timeout=30) == before  # nothing half-written
    assert api.get(f"/meta/image/{fresh_uuid}").status_code == 404
    retry = upload(api, fresh, fresh_uuid)
    assert retry.status_code == 200, retry.text
    hits = search(api, fresh).json()["data"]
    assert hits[0]["meta_uuid"] == fresh_uuid and hits[0]["distance"] == pytest.approx(0, abs=1e-3)
    assert api.get(kept_file).status_code == 200
    for uuid in (kept_uuid, fresh_uuid):
        assert api.delete(f"/meta/image/{uuid}").status_code == 200
