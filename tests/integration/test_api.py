"""The HTTP API on a real Ray Serve graph: the original front end's calls, additions, errors."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration

META_FIELDS = {"id", "meta_uuid", "hash_code", "milvus_id", "file_name", "file_path",
               "created_at", "updated_at", "file_url", "file_relative_url"}  # fmt: skip


def jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def noise_jpeg(seed: int) -> bytes:
    return jpeg(np.random.default_rng(seed).integers(0, 255, (64, 96, 3), dtype=np.uint8))


@pytest.fixture
def client(app_url: str) -> httpx.Client:
    return httpx.Client(base_url=app_url, timeout=120)


def assert_envelope(body: dict[str, Any], succeed: bool) -> None:
    assert body["succeed"] is succeed and isinstance(body["message"], str)


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["succeed"] is True
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"metadata": "ok", "objects": "ok", "vectors": "ok",
                                      "model": "ok"}  # fmt: skip
    # What the Embedder resolved model.runtime/precision (auto) to on this machine, and why.
    model = ready.json()["model"]
    assert model["model_id"] == f"efficientnet-lite0:{model['runtime']}-{model['precision']}"
    assert model["dim"] == 1280 and model["reason"]
    assert (
        client.get("/", headers={"accept": "application/json"}).json()["message"] == "Hello World"
    )


def test_original_front_end_replay(client: httpx.Client, photos: dict[str, bytes]) -> None:
    """The calls image_search_web makes, with its field names and defaults."""
    names = ["coffee", "rocket", "astronaut"]
    uploaded = {}
    for name in names:
        r = client.post("/meta/image/file", files={"file": (f"{name}.jpg", photos[name])},
                        data={"meta_uuid": f"fe-{name}"})  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert_envelope(body, True)
        assert set(body["data"]) >= META_FIELDS
        assert body["data"]["meta_uuid"] == f"fe-{name}"
        assert isinstance(body["data"]["milvus_id"], int) and body["data"]["milvus_id"] >= 0
        uploaded[name] = body["data"]

    page = client.get("/meta/image", params={"offset": 0, "limit": 2}).json()
    assert_envelope(page, True)
    assert len(page["data"]) == 2 and page["total"] >= 3
    assert all(set(d) >= META_FIELDS for d in page["data"])
    ids = [d["id"] for d in page["data"]]
    assert ids == sorted(ids, reverse=True)  # newest first, a stable order
    second = client.get("/meta/image", params={"offset": 2, "limit": 2}).json()["data"]
    assert not {d["id"] for d in second} & set(ids)

    counts = client.get("/meta/image/count").json()
    assert counts["image_count"] >= 3 and counts["vector_count"] >= 3

    got = client.get("/meta/image/fe-rocket").json()
    assert got["data"]["hash_code"] == uploaded["rocket"]["hash_code"]

    found = client.post("/sample/file", files={"file": ("q.jpg", photos["rocket"])},
                        data={"offset": 0, "limit": 5}).json()  # fmt: skip
    assert_envelope(found, True)
    top = found["data"][0]
    assert top["meta_uuid"] == "fe-rocket" and META_FIELDS | {"distance", "score"} <= set(top)
    assert top["distance"] < 1e-3 and top["score"] == pytest.approx((2 - top["distance"]) * 50)
    dists = [d["distance"] for d in found["data"]]
    assert dists == sorted(dists)

    for name in names:
        assert client.delete(f"/meta/image/fe-{name}").json()["succeed"] is True
        assert client.get(f"/meta/image/fe-{name}").status_code == 404


def test_upload_with_tags(client: httpx.Client) -> None:
    r = client.post("/meta/image/file", files={"file": ("t.jpg", noise_jpeg(77))},
                    data={"meta_uuid": "tagged", "tags": "shoe, red ,,sale"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["data"]["tags"] == ["shoe", "red", "sale"]
    assert client.get("/meta/image/tagged").json()["data"]["tags"] == ["shoe", "red", "sale"]
    client.delete("/meta/image/tagged")


def test_default_meta_uuid_is_md5_and_duplicate_is_409(client: httpx.Client) -> None:
    data = noise_jpeg(1)
    first = client.post("/meta/image/file", files={"file": ("n.jpg", data)}).json()["data"]
    assert first["meta_uuid"] == first["hash_code"]
    again = client.post("/meta/image/file", files={"file": ("n.jpg", data)})
    assert again.status_code == 409
    assert_envelope(again.json(), False)
    client.delete(f"/meta/image/{first['meta_uuid']}")


def test_files_and_thumbnails_are_served(client: httpx.Client, photos: dict[str, bytes]) -> None:
    rec = client.post("/meta/image/file", files={"file": ("c.jpg", photos["chelsea"])},
                      data={"meta_uuid": "served"}).json()["data"]  # fmt: skip
    assert rec["file_url"].endswith(rec["file_relative_url"])
    original = client.get(rec["file_url"])
    assert original.status_code == 200 and original.content == photos["chelsea"]
    assert original.headers["content-type"] == "image/jpeg"
    thumb = client.get(rec["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    assert len(thumb.content) < len(photos["chelsea"])
    client.delete("/meta/image/served")
    # Delete really deletes: the stored bytes are gone too.
    assert client.get(rec["file_url"]).status_code == 404
    assert client.get(rec["thumbnail_url"]).status_code == 404


def test_batch_upload_reports_each_file(client: httpx.Client, photos: dict[str, bytes]) -> None:
    good = [photos["moon"], photos["coins"], photos["page"]]
    parts = [("file", (f"{i}.jpg", b)) for i, b in enumerate(good)]
    parts += [("file", ("bad.jpg", b"not an image")), ("file", ("cut.jpg", good[0][:500])),
              ("file", ("dup.jpg", good[1]))]  # fmt: skip
    r = client.post("/meta/image/files", files=parts)
    assert r.status_code == 200, r.text
    items = r.json()["data"]
    assert [i["status"] for i in items] == [200, 200, 200, 415, 400, 409]
    assert all(i["succeed"] for i in items[:3]) and not any(i["succeed"] for i in items[3:])
    uuids = [i["data"]["meta_uuid"] for i in items[:3]]
    for u, b in zip(uuids, good, strict=True):
        hits = client.post("/sample/file", files={"file": ("q.jpg", b)}, data={"limit": 1})
        assert hits.json()["data"][0]["meta_uuid"] == u
    for u in uuids:
        client.delete(f"/meta/image/{u}")


def test_search_by_stored_image_and_threshold(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    for name in ("brick", "grass", "retina"):
        client.post("/meta/image/file", files={"file": (f"{name}.jpg", photos[name])},
                    data={"meta_uuid": f"s-{name}"})  # fmt: skip
    r = client.get("/sample/meta/s-retina", params={"limit": 3}).json()
    assert r["data"][0]["meta_uuid"] == "s-retina" and r["data"][0]["distance"] < 1e-4
    tight = client.get("/sample/meta/s-retina", params={"limit": 10, "threshold": 0.01}).json()
    assert [d["meta_uuid"] for d in tight["data"]] == ["s-retina"]
    assert client.get("/sample/meta/nope").status_code == 404
    for name in ("brick", "grass", "retina"):
        client.delete(f"/meta/image/s-{name}")


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"", 400),
        (b"hello world, not an image", 415),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, 400),
        (b"%PDF-1.7\n", 415),
    ],
)
def test_bad_uploads_get_4xx_and_server_stays_up(
    client: httpx.Client, payload: bytes, status: int
) -> None:
    for route, extra in (("/meta/image/file", {}), ("/sample/file", {"limit": "5"})):
        r = client.post(route, files={"file": ("x.jpg", payload)}, data=extra)
        assert r.status_code == status, r.text
        assert_envelope(r.json(), False)
    assert client.get("/healthz").status_code == 200


# Both routes: an upload is decoded by the Embedder (alone) or the Decoder (under load), a
# query by the Embedder (embed_query).
@pytest.mark.parametrize("route", ["/meta/image/file", "/sample/file"])
def test_truncated_photo_is_400(client: httpx.Client, photos: dict[str, bytes], route: str) -> None:
    data = photos["astronaut"]
    r = client.post(route, files={"file": ("t.jpg", data[: len(data) // 2])})
    assert r.status_code == 400 and "truncated" in r.json()["message"]


@pytest.mark.parametrize("route", ["/meta/image/file", "/sample/file"])
def test_decompression_bomb_is_413(client: httpx.Client, route: str) -> None:
    buf = io.BytesIO()
    Image.new("L", (20000, 20000), 0).save(buf, format="PNG")
    r = client.post(route, files={"file": ("bomb.png", buf.getvalue())})
    assert r.status_code == 413 and "pixels" in r.json()["message"]
    assert client.get("/healthz").status_code == 200


def test_oversized_upload_is_413(client: httpx.Client) -> None:
    too_big = b"\xff\xd8\xff" + b"\x00" * (20 * 1024 * 1024 + 10)
    r = client.post("/meta/image/file", files={"file": ("big.jpg", too_big)})
    assert r.status_code == 413
    assert_envelope(r.json(), False)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("get", "/meta/image/does-not-exist", {}, 404),
        ("delete", "/meta/image/does-not-exist", {}, 404),
        ("get", "/meta/image", {"params": {"limit": 0}}, 400),
        ("get", "/meta/image", {"params": {"offset": -1}}, 400),
        ("get", "/meta/image", {"params": {"limit": "ten"}}, 400),
        ("post", "/sample/file", {"data": {"limit": "5"}}, 400),  # no file part
        ("get", "/files/meta/image/..%2F..%2F..%2Fetc%2Fpasswd", {}, 404),
        ("get", "/files/config.yaml", {}, 404),
        ("get", "/no/such/route", {}, 404),
    ],
)
def test_client_mistakes_get_the_envelope(
    client: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    assert_envelope(r.json(), False)


def test_bad_meta_uuid_and_limits(client: httpx.Client) -> None:
    r = client.post("/meta/image/file", files={"file": ("x.jpg", noise_jpeg(5))},
                    data={"meta_uuid": "x" * 37})  # fmt: skip
    assert r.status_code == 400
    r = client.post("/sample/file", files={"file": ("x.jpg", noise_jpeg(5))},
                    data={"offset": "0", "limit": "5000"})  # fmt: skip
    assert r.status_code == 400
    r = client.post("/sample/file", files={"file": ("x.jpg", noise_jpeg(5))},
                    data={"threshold": "-1"})  # fmt: skip
    assert r.status_code == 400


def test_concurrent_identical_uploads_store_one_row_and_one_vector(app_url: str) -> None:
    data = noise_jpeg(42)

    def post(_: int) -> int:
        r = httpx.post(app_url + "/meta/image/file", files={"file": ("d.jpg", data)}, timeout=120)
        return r.status_code

    before = httpx.get(app_url + "/meta/image/count").json()
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(post, range(6)))
    assert sorted(codes) == [200] + [409] * 5
    after = httpx.get(app_url + "/meta/image/count").json()
    assert after["image_count"] == before["image_count"] + 1
    assert after["vector_count"] == before["vector_count"] + 1
    import hashlib

    httpx.delete(f"{app_url}/meta/image/{hashlib.md5(data).hexdigest()}")


def test_indexer_refuses_vectors_from_another_model(app_url: str) -> None:
    """During a rolling model switch, an old/new Embedder never writes into the wrong index."""
    from ray import serve

    from image_search.embedding import Embedding
    from image_search.errors import StoreUnavailable

    httpx.get(app_url + "/readyz", timeout=60)
    indexer = serve.get_deployment_handle("Indexer", app_name="embedded")
    stranger = Embedding("resnet50:fp32", np.ones(1280, dtype=np.float32) / np.sqrt(1280))
    with pytest.raises(StoreUnavailable, match="model switch"):
        indexer.search.remote(stranger, 0, 5, None).result(timeout_s=60)


def test_tag_filters_on_lists_counts_search_and_tags(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    """Tagged and untagged images: every filter sees only images carrying all its tags."""
    space, drink = "it-space", "it-drink"
    for name, tags in (("rocket", space), ("astronaut", space), ("coffee", drink),
                       ("chelsea", "")):  # fmt: skip
        r = client.post("/meta/image/file", files={"file": (f"{name}.jpg", photos[name])},
                        data={"meta_uuid": f"tg-{name}", "tags": tags})  # fmt: skip
        assert r.status_code == 200, r.text

    def uuids(resp: httpx.Response) -> list[str]:
        assert resp.status_code == 200, resp.text
        return [d["meta_uuid"] for d in resp.json()["data"]]

    listed = client.get("/meta/image", params={"tags": space})
    assert uuids(listed) == ["tg-astronaut", "tg-rocket"] and listed.json()["total"] == 2
    assert client.get("/meta/image/count", params={"tags": space}).json()["image_count"] == 2
    counts = {t["tag"]: t["count"] for t in client.get("/tags").json()["data"]}
    assert (counts[space], counts[drink]) == (2, 1)

    # The coffee photo, restricted to "space": only the two space images, never itself.
    found = client.post("/sample/file", files={"file": ("q.jpg", photos["coffee"])},
                        data={"tags": space})  # fmt: skip
    assert sorted(uuids(found)) == ["tg-astronaut", "tg-rocket"]
    assert all(space in hit["tags"] for hit in found.json()["data"])
    top = client.post("/sample/file", files={"file": ("q.jpg", photos["rocket"])},
                      data={"tags": space, "limit": 1}).json()["data"]  # fmt: skip
    assert [h["meta_uuid"] for h in top] == ["tg-rocket"] and top[0]["distance"] < 1e-3
    both = client.get("/sample/meta/tg-chelsea", params=[("tags", space), ("tags", drink)])
    assert uuids(both) == []
    assert uuids(client.get("/sample/meta/tg-chelsea", params={"tags": drink})) == ["tg-coffee"]

    client.delete("/meta/image/tg-rocket")
    counts = {t["tag"]: t["count"] for t in client.get("/tags").json()["data"]}
    assert counts[space] == 1
    for bad in ("x" * 513, "a\x01b", ",".join(map(str, range(65)))):
        r = client.get("/meta/image", params={"tags": bad})
        assert r.status_code == 400 and "tag" in r.json()["message"]
        r = client.post("/sample/file", files={"file": ("q.jpg", photos["coffee"])},
                        data={"tags": bad})  # fmt: skip
        assert r.status_code == 400 and r.json()["succeed"] is False
    for name in ("astronaut", "coffee", "chelsea"):
        client.delete(f"/meta/image/tg-{name}")
    assert space not in {t["tag"] for t in client.get("/tags").json()["data"]}


def big_png(seed: int) -> bytes:
    """A valid 1600x1200 PNG of noise, which does not compress: about 5.8 MB, bigger than one
    message of gRPC's default size (4 MiB), a limit Serve's gRPC transport would put on every
    call that carries a file (README, "How it works")."""
    arr = np.random.default_rng(seed).integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def test_files_over_4_mib_cross_every_hop(client: httpx.Client) -> None:
    """Upload, search, download and a batch with files over 4 MiB: each of these carries the
    whole file across a Serve call."""
    one, *two = (big_png(s) for s in (41, 42, 43))
    assert all(4 * 1024 * 1024 < len(d) < 20 * 1024 * 1024 for d in (one, *two))
    r = client.post("/meta/image/file", files={"file": ("big.png", one)})
    assert r.status_code == 200, r.text
    rec = r.json()["data"]
    hits = client.post("/sample/file", files={"file": ("q.png", one)}, data={"limit": "1"})
    assert hits.status_code == 200, hits.text
    assert hits.json()["data"][0]["meta_uuid"] == rec["meta_uuid"]
    got = client.get(f"/files/{rec['file_path']}")
    assert got.status_code == 200 and got.content == one
    batch = client.post("/meta/image/files",
                        files=[("file", (f"b{i}.png", d)) for i, d in enumerate(two)])  # fmt: skip
    assert batch.status_code == 200, batch.text
    made = batch.json()["data"]
    assert [d["status"] for d in made] == [200, 200], made
    for uuid in [rec["meta_uuid"], *(d["data"]["meta_uuid"] for d in made)]:
        assert client.delete(f"/meta/image/{uuid}").status_code == 200
