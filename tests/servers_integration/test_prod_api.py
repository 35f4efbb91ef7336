"""The HTTP API on MariaDB + S3 + a Milvus server: every write checked in the servers too."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.servers_integration.conftest import Backends

pytestmark = [pytest.mark.servers, pytest.mark.integration]


def upload(api: httpx.Client, data: bytes, meta_uuid: str | None = None) -> httpx.Response:
    form = {"meta_uuid": meta_uuid} if meta_uuid else {}
    return api.post("/meta/image/file", files={"file": ("猫.jpg", data)}, data=form)


def test_readiness_names_every_store(api: httpx.Client) -> None:
    r = api.get("/readyz")
    assert r.status_code == 200, r.text
    assert {"metadata", "objects", "vectors"} <= set(r.json()["checks"])


def test_upload_list_get_search_delete(
    api: httpx.Client, backends: Backends, unique_photo: Callable[[str, int], bytes]
) -> None:
    a, b = unique_photo("chelsea", 101), unique_photo("rocket", 102)
    before = api.get("/meta/image/count").json()

    ra, rb = upload(api, a, "srv-a"), upload(api, b, "srv-b")
    assert ra.status_code == 200 and rb.status_code == 200, (ra.text, rb.text)
    rec = ra.json()["data"]
    assert rec["file_name"] == "猫.jpg" and rec["milvus_id"] > 0

    after = api.get("/meta/image/count").json()
    assert after["image_count"] == before["image_count"] + 2
    assert after["vector_count"] == before["vector_count"] + 2
    listed = api.get("/meta/image", params={"limit": 2}).json()
    assert [d["meta_uuid"] for d in listed["data"]] == ["srv-b", "srv-a"]  # newest first
    assert listed["total"] == after["image_count"]
    got = api.get("/meta/image/srv-a").json()["data"]
    assert got["created_at"] == rec["created_at"] and got["milvus_id"] == rec["milvus_id"]
    assert api.get(rec["file_relative_url"]).content == a  # streamed from S3 by our API

    # Search right after the upload finds it (Strong consistency on the Milvus server).
    hits = api.post("/sample/file", files={"file": ("q.jpg", a)}, data={"limit": 3}).json()
    assert hits["data"][0]["meta_uuid"] == "srv-a"
    assert hits["data"][0]["distance"] == pytest.approx(0.0, abs=1e-3)

    # In the servers themselves: a row, an object, a vector.
    row = backends.row("srv-a")
    assert row is not None and row[2] == rec["milvus_id"] and row[3] == rec["file_path"]
    assert backends.object_exists(rec["file_path"]) and backends.vector_exists(rec["milvus_id"])

    # Same meta_uuid again: 409. Same bytes under another id: a second row, one vector.
    dup = upload(api, a, "srv-a")
    assert dup.status_code == 409 and dup.json()["succeed"] is False
    assert upload(api, a, "srv-a2").status_code == 200
    assert api.get("/meta/image/count").json()["vector_count"] == after["vector_count"]

    # Deleting one of two rows keeps the shared content; deleting the last removes it all.
    assert api.delete("/meta/image/srv-a").status_code == 200
    assert backends.row("srv-a") is None
    assert backends.object_exists(rec["file_path"]) and backends.vector_exists(rec["milvus_id"])
    assert api.delete("/meta/image/srv-a2").status_code == 200
    assert not backends.object_exists(rec["file_path"])
    assert not backends.vector_exists(rec["milvus_id"])
    assert api.get("/meta/image/srv-a").status_code == 404
    assert api.delete("/meta/image/srv-a").status_code == 404
    hits = api.post("/sample/file", files={"file": ("q.jpg", a)}, data={"limit": 3}).json()
    assert "srv-a" not in {h["meta_uuid"] for h in hits["data"]}
    final = api.get("/meta/image/count").json()
    assert final["image_count"] == before["image_count"] + 1  # srv-b stays
    assert api.delete("/meta/image/srv-b").status_code == 200
