"""Routes and flows over stand-in handles: envelopes, error mapping, batch outcomes, search."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.fakes import FakeEmbedder
from tests.unit.deployments.conftest import Service, jpeg

META_FIELDS = {"id", "meta_uuid", "hash_code", "milvus_id", "file_name", "file_path",
               "created_at", "updated_at", "file_url", "file_relative_url"}  # fmt: skip


def fails(resp: Any, status: int) -> dict[str, Any]:
    """The shared error envelope, with the expected status."""
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["succeed"] is False and isinstance(body["message"], str) and body["message"]
    return body


def upload(client: TestClient, data: bytes, name: str = "a.jpg", **form: str) -> Any:
    return client.post("/meta/image/file", files={"file": (name, data)}, data=form)


def test_upload_then_get_list_count_and_file(client: TestClient) -> None:
    r = upload(client, jpeg(1), meta_uuid="one", tags="cat, dog")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["succeed"] is True and body["message"] == "indexed"
    rec = body["data"]
    assert set(rec) >= META_FIELDS and rec["tags"] == ["cat", "dog"]
    assert (rec["width"], rec["height"]) == (96, 64)
    assert rec["file_url"] == "http://testserver" + rec["file_relative_url"]
    assert client.get("/meta/image/one").json()["data"]["sha256"] == rec["sha256"]
    listing = client.get("/meta/image", params={"limit": 5}).json()
    assert listing["total"] == 1 and [d["meta_uuid"] for d in listing["data"]] == ["one"]
    assert client.get("/meta/image/count").json() == {
        "succeed": True, "message": "ok", "image_count": 1, "vector_count": 1,
        "regions": False}  # fmt: skip
    got = client.get(rec["file_relative_url"])
    assert got.content == jpeg(1) and got.headers["content-type"] == "image/jpeg"
    thumb = client.get("/meta/image/one/thumbnail")
    assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"


def test_list_pages_by_cursor(client: TestClient) -> None:
    for i in range(5):
        assert upload(client, jpeg(i), meta_uuid=f"p{i}").status_code == 200
    first = client.get("/meta/image", params={"limit": 2}).json()
    assert [d["meta_uuid"] for d in first["data"]] == ["p4", "p3"] and first["total"] == 5
    assert first["next_before"] == first["data"][-1]["id"]
    pages, cursor = [], first["next_before"]
    while cursor is not None:
        body = client.get("/meta/image", params={"limit": 2, "before": cursor}).json()
        pages.append([d["meta_uuid"] for d in body["data"]])
        cursor = body["next_before"]
    assert pages == [["p2", "p1"], ["p0"]]
    for bad in (0, -1, 2**63, "x"):
        fails(client.get("/meta/image", params={"before": bad}), 400)


def test_same_bytes_or_same_uuid_is_409(client: TestClient) -> None:
    assert upload(client, jpeg(1)).status_code == 200
    body = fails(upload(client, jpeg(1)), 409)  # default meta_uuid: the md5 of the bytes
    assert "already exists" in body["message"]
    assert upload(client, jpeg(2), meta_uuid="x").status_code == 200
    fails(upload(client, jpeg(3), meta_uuid="x"), 409)
    # The same bytes under another explicit id: a second row, sharing one vector.
    assert upload(client, jpeg(2), meta_uuid="y").status_code == 200
    counts = client.get("/meta/image/count").json()
    assert (counts["image_count"], counts["vector_count"]) == (3, 2)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),  # empty
        (b"plain text, not an image", 415),
        (b"\xff\xd8\xff\xe0 truncated jpeg", 400),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 400),  # corrupt PNG
    ],
)
def test_bad_files_get_4xx_and_nothing_is_written(
    service: Service, data: bytes, status: int
) -> None:
    fails(upload(service.client, data), status)
    fails(service.client.post("/sample/file", files={"file": ("q.jpg", data)}), status)
    assert service.svc.counts() == (0, 0) and list(service.svc.stores.objects.keys()) == []


def test_upload_over_the_byte_limit_is_413(make_service: Any) -> None:
    service = make_service(**{"limits.max_upload_bytes": 2048, "limits.max_batch_files": 1})
    fails(upload(service.client, jpeg(1, (400, 300))), 413)
    # A body over the whole request limit is refused from its Content-Length alone.
    big = b"\xff\xd8\xff" + b"\x00" * (2048 + 2 * 1024 * 1024)
    fails(upload(service.client, big), 413)
    assert service.svc.counts() == (0, 0)


def test_bad_parameters_get_400_in_the_envelope(client: TestClient) -> None:
    fails(upload(client, jpeg(1), meta_uuid="has space"), 400)
    fails(upload(client, jpeg(1), meta_uuid="x" * 37), 400)
    fails(client.get("/meta/image", params={"limit": 0}), 400)
    fails(client.get("/meta/image", params={"offset": -1}), 400)
    q = {"file": ("q.jpg", jpeg(1))}
    fails(client.post("/sample/file", files=q, data={"limit": "2000"}), 400)  # over the cap
    fails(client.post("/sample/file", files=q, data={"threshold": "-1"}), 400)
    fails(client.post("/sample/file", data={"limit": "3"}), 400)  # no file at all
    fails(client.get("/meta/image/nope"), 404)
    fails(client.delete("/meta/image/nope"), 404)
    fails(client.get("/files/thumb/64/x.jpg"), 404)  # only image keys are served
    fails(client.get("/files/meta/image/../../etc/passwd"), 404)
    fails(client.get("/no/such/route"), 404)


def test_batch_upload_reports_each_file(client: TestClient) -> None:
    assert upload(client, jpeg(9)).status_code == 200
    parts = [
        ("file", ("new.jpg", jpeg(1))),
        ("file", ("again.jpg", jpeg(1))),  # twice in one request
        ("file", ("stored.jpg", jpeg(9))),  # indexed before
        ("file", ("text.txt", b"hello")),
        ("file", ("broken.jpg", b"\xff\xd8\xff\xe0 truncated")),
        ("file", ("other.jpg", jpeg(2))),
    ]
    body = client.post("/meta/image/files", files=parts).json()
    assert body["succeed"] is True and body["message"] == "2 of 6 indexed"
    got = [(d["file_name"], d["status"]) for d in body["data"]]
    assert got == [("new.jpg", 200), ("again.jpg", 409), ("stored.jpg", 409),
                   ("text.txt", 415), ("broken.jpg", 400), ("other.jpg", 200)]  # fmt: skip
    assert body["data"][0]["data"]["file_name"] == "new.jpg"
    assert body["data"][5]["data"]["file_name"] == "other.jpg"
    counts = client.get("/meta/image/count").json()
    assert (counts["image_count"], counts["vector_count"]) == (3, 3)


def test_batch_over_the_file_limit_is_400(make_service: Any) -> None:
    client = make_service(**{"limits.max_batch_files": 2}).client
    parts = [("file", (f"{i}.jpg", jpeg(i))) for i in range(3)]
    assert "at most 2" in fails(client.post("/meta/image/files", files=parts), 400)["message"]


def test_search_finds_the_image_first_with_distance_and_score(client: TestClient) -> None:
    for seed in range(5):
        assert upload(client, jpeg(seed), meta_uuid=f"img-{seed}").status_code == 200
    r = client.post("/sample/file", files={"file": ("q.jpg", jpeg(3))}, data={"limit": "3"})
    hits = r.json()["data"]
    assert len(hits) == 3 and hits[0]["meta_uuid"] == "img-3"
    assert hits[0]["distance"] < 1e-6 and hits[0]["score"] == pytest.approx(100.0)
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    assert all(h["score"] == pytest.approx((2 - h["distance"]) / 2 * 100) for h in hits)
    near = client.post(
        "/sample/file", files={"file": ("q.jpg", jpeg(3))}, data={"threshold": "0.0001"}
    ).json()["data"]
    assert [h["meta_uuid"] for h in near] == ["img-3"]
    stored = client.get("/sample/meta/img-3", params={"limit": 2, "offset": 1}).json()["data"]
    assert [h["meta_uuid"] for h in stored] == [hits[1]["meta_uuid"], hits[2]["meta_uuid"]]
    fails(client.get("/sample/meta/missing"), 404)


def test_delete_one_and_delete_all(client: TestClient, service: Service) -> None:
    for seed in range(3):
        upload(client, jpeg(seed), meta_uuid=f"d{seed}")
    deleted = client.delete("/meta/image/d0").json()
    assert deleted["message"] == "deleted" and deleted["data"]["meta_uuid"] == "d0"
    fails(client.get("/meta/image/d0"), 404)
    body = client.delete("/meta/image/images").json()
    assert body["deleted"] == 2 and service.svc.counts() == (0, 0)


def test_delete_all_needs_the_admin_token_when_one_is_set(make_service: Any) -> None:
    service = make_service(**{"server.admin_token": "s3cret-token"})
    upload(service.client, jpeg(1))
    fails(service.client.delete("/meta/image/images"), 401)
    fails(service.client.delete("/meta/image/images", headers={"x-admin-token": "wrong"}), 401)
    assert service.svc.counts() == (1, 1)
    ok = service.client.delete("/meta/image/images", headers={"x-admin-token": "s3cret-token"})
    assert ok.json()["deleted"] == 1


def test_readiness_reports_each_store_and_the_model(client: TestClient, service: Service) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"metadata": "ok", "objects": "ok", "vectors": "ok",
                                  "model": "ok"}  # fmt: skip
    assert r.json()["model"] == service.embedder.info()  # what runs, e.g. runtime and precision

    def down() -> None:
        raise RuntimeError("replica gone")

    service.embedder.info = down  # type: ignore[method-assign]
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["model"] == "unavailable: RuntimeError"


def test_search_rides_out_a_model_switch(make_service: Any) -> None:
    embedder = FakeEmbedder(other_model_calls=0)
    service = make_service(embedder)
    upload(service.client, jpeg(1), meta_uuid="a")
    embedder.other_model_calls = embedder.calls + 2  # the next two answers: the other model
    r = service.client.post("/sample/file", files={"file": ("q.jpg", jpeg(1))})
    assert r.status_code == 200 and r.json()["data"][0]["meta_uuid"] == "a"
    # An upload is not retried: the Indexer refuses the vector with a retryable 503.
    embedder.other_model_calls = embedder.calls + 1
    body = fails(upload(service.client, jpeg(2)), 503)
    assert body["store"] == "vectors" and "model switch" in body["message"]
    assert service.svc.counts() == (1, 1)


def test_a_store_down_is_503_with_the_store(service: Service) -> None:
    def down(*_: Any) -> None:
        from image_search.errors import StoreUnavailable

        raise StoreUnavailable("metadata unavailable (test)", "metadata")

    service.svc.stores.metadata.page = down  # type: ignore[method-assign]
    body = fails(service.client.get("/meta/image"), 503)
    assert body["store"] == "metadata"


def test_an_unexpected_error_is_a_500_in_the_envelope(service: Service) -> None:
    def broken(*_: Any) -> None:
        raise KeyError("bug")

    service.svc.stores.metadata.count = broken  # type: ignore[method-assign]
    body = fails(service.client.get("/meta/image/count"), 500)
    assert body["message"] == "internal error: KeyError"


def test_web_page_for_browsers_hello_for_the_rest(client: TestClient) -> None:
    page = client.get("/", headers={"accept": "text/html"})
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert client.get("/", headers={"accept": "application/json"}).json()["message"] == (
        "Hello World"
    )
    assert client.get("/healthz").json() == {"succeed": True, "message": "alive"}
