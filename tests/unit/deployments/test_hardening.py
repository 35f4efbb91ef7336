"""Issue 10's reproduced defects, through the app: each of these answered wrongly before."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from deployments.routes import router
from image_search.records import RESERVED_META_UUIDS, TAGS_MAX_JSON
from tests.unit.deployments.conftest import Service, jpeg
from tests.unit.deployments.test_routes import fails, upload


def shadowing_words() -> set[str]:
    """Literal segments under /meta/image/ whose routes answer the methods an id's routes do.

    (POST /meta/image/file does not shadow GET /meta/image/file; DELETE .../images did.)
    """
    words = set()
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path.startswith("/meta/image/"):
            segment = route.path.removeprefix("/meta/image/").split("/")[0]
            if "{" not in segment and route.methods & {"GET", "DELETE"}:
                words.add(segment)
    return words


def test_reserved_words_are_exactly_the_collection_routes() -> None:
    assert shadowing_words() == set(RESERVED_META_UUIDS)


@pytest.mark.parametrize("meta_uuid", ["images", "count", ".", "..", ".hidden", "-x", "_x"])
def test_an_id_a_route_would_shadow_is_refused(client: TestClient, meta_uuid: str) -> None:
    body = fails(upload(client, jpeg(1), meta_uuid=meta_uuid), 400)
    assert "meta_uuid" in body["message"]
    assert client.get("/meta/image/count").json()["image_count"] == 0


def test_deleting_one_image_never_deletes_the_others(client: TestClient) -> None:
    for i, name in enumerate(("a", "b", "c")):
        assert upload(client, jpeg(i), meta_uuid=name).status_code == 200
    assert client.delete("/meta/image/b").json()["data"]["meta_uuid"] == "b"
    assert client.get("/meta/image/count").json()["image_count"] == 2


def test_a_huge_offset_is_400_not_an_overflow(client: TestClient) -> None:
    for offset in (2**63, 2**31):
        fails(client.get("/meta/image", params={"offset": offset}), 400)
    assert client.get("/meta/image", params={"offset": 2**31 - 1}).status_code == 200


@pytest.mark.parametrize(
    "key", ["meta/image/x%00", "meta/image/%00.jpg", "meta/image/" + "a" * 64 + ".jp g"]
)
def test_odd_file_keys_are_404(client: TestClient, key: str) -> None:
    fails(client.get(f"/files/{key}"), 404)


def test_tags_that_do_not_fit_their_column_are_400_and_nothing_is_written(
    client: TestClient, service: Service
) -> None:
    # Under the form's 2000 characters, but 6 bytes each once escaped in the stored JSON.
    tags = "é" * 1990
    assert len(json.dumps([tags])) > TAGS_MAX_JSON
    assert "tags" in fails(upload(client, jpeg(1), tags=tags), 400)["message"]
    fails(upload(client, jpeg(1), tags=",".join(str(i) for i in range(65))), 400)
    assert service.svc.counts() == (0, 0)
    assert not any(service.svc.stores.objects.keys())
    ok = upload(client, jpeg(1), tags="é" * 300)
    assert ok.status_code == 200 and ok.json()["data"]["tags"] == ["é" * 300]


@pytest.mark.parametrize(
    "failure",
    [ActorDiedError(), BackPressureError(num_queued_requests=9, max_queued_requests=8)],
    ids=["replica died", "replica queue full"],
)
def test_a_replica_failure_is_a_retryable_503(service: Service, failure: Exception) -> None:
    def dies(*_: Any) -> None:
        raise failure

    service.svc.stores.metadata.count = dies  # type: ignore[method-assign]
    resp = service.client.get("/meta/image/count")
    body = fails(resp, 503)
    assert "retry" in body["message"] and resp.headers["retry-after"] == "1"


def test_a_batch_is_sent_on_in_slices(make_service: Any) -> None:
    service = make_service(**{"limits.batch_slice_bytes": 1024})
    calls: list[int] = []
    index_many = service.flows.index_many

    async def counted(files: Any) -> Any:
        calls.append(len(files))
        return await index_many(files)

    service.flows.index_many = counted
    parts = [("file", (f"{i}.jpg", jpeg(i))) for i in range(3)]  # each over 1 KiB
    body = service.client.post("/meta/image/files", files=parts).json()
    assert body["message"] == "3 of 3 indexed" and calls == [1, 1, 1]


def test_thumbnails_are_made_at_ingest_never_from_the_original_on_request(
    client: TestClient, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    import image_search.indexing

    def no_original_decodes(*_: Any) -> bytes:
        raise AssertionError("a request decoded an original for its thumbnail")

    monkeypatch.setattr(image_search.indexing, "thumbnail_jpeg", no_original_decodes)
    one = upload(client, jpeg(1, (400, 300)), meta_uuid="one").json()["data"]
    parts = [("file", ("b.jpg", jpeg(2, (300, 400))))]
    two = client.post("/meta/image/files", files=parts).json()["data"][0]["data"]
    for rec in (one, two):
        thumb = client.get(f"/meta/image/{rec['meta_uuid']}/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(thumb.content)) as im:
            assert max(im.size) == 64 and im.size[0] != im.size[1]  # aspect kept


@pytest.mark.parametrize(("keys", "who"), [(True, "private"), (False, "public")])
def test_images_behind_keys_stay_out_of_shared_caches(keys: bool, who: str) -> None:
    from types import SimpleNamespace

    from deployments.routes import cache_headers
    from image_search.config import load_settings

    settings = load_settings(environ={}, overrides={"security.require_keys": keys})
    policy = cache_headers(SimpleNamespace(settings=settings), "max-age=60")  # type: ignore[arg-type]
    assert policy == {"Cache-Control": f"{who}, max-age=60"}
