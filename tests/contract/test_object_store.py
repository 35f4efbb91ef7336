"""ObjectStore contract: local directory and S3 (moto) behave the same; S3 specifics after."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from image_search.errors import NotFound, StoreUnavailable
from image_search.stores import ObjectStore, open_objects
from tests.contract.conftest import s3_settings, settings, unique
from tests.servers import MotoS3

ALL_BYTES = bytes(range(256)) * 64


def test_put_get_exists_delete(object_store: ObjectStore) -> None:
    key = "meta/image/abc.jpg"
    assert not object_store.exists(key)
    object_store.put(key, ALL_BYTES, "image/jpeg")
    assert object_store.exists(key)
    assert object_store.get(key) == ALL_BYTES
    object_store.put(key, b"replaced", "image/jpeg")  # same key again: idempotent overwrite
    assert object_store.get(key) == b"replaced"
    object_store.delete(key)
    assert not object_store.exists(key)


def test_missing_key(object_store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        object_store.get("meta/image/missing.png")
    object_store.delete("meta/image/missing.png")  # deleting what is not there is fine
    assert not object_store.exists("meta/image/missing.png")


def test_keys_by_prefix(object_store: ObjectStore) -> None:
    assert list(object_store.keys()) == []
    for key in ["meta/image/b.png", "meta/image/a.png", "thumb/256/a.jpg"]:
        object_store.put(key, b"x", "image/png")
    assert sorted(object_store.keys()) == [
        "meta/image/a.png",
        "meta/image/b.png",
        "thumb/256/a.jpg",
    ]
    assert list(object_store.keys("thumb/")) == ["thumb/256/a.jpg"]


def test_keys_by_a_name_prefix(object_store: ObjectStore) -> None:
    """A prefix may end inside a name, and a folder whose name starts with it is listed with
    all it holds."""
    for key in ["meta/image/ab1.png", "meta/image/ab2.png", "meta/image/ac.png",
                "meta/image/ab/deeper.png", "thumb/64/ab.jpg"]:  # fmt: skip
        object_store.put(key, b"x", "image/png")
    assert sorted(object_store.keys("meta/image/ab")) == [
        "meta/image/ab/deeper.png", "meta/image/ab1.png", "meta/image/ab2.png"
    ]  # fmt: skip
    assert list(object_store.keys("meta/image/ac")) == ["meta/image/ac.png"]
    assert list(object_store.keys("meta/image/ad")) == []
    assert list(object_store.keys("nothing/here/")) == []
    assert len(list(object_store.keys("meta/"))) == 4


def test_local_keys_do_not_follow_links_to_folders(tmp_path: Path) -> None:
    store = open_objects(settings(objects_uri=f"file://{tmp_path}/objects"))
    store.put("meta/image/a.png", b"x", "image/png")
    root = tmp_path / "objects"
    (root / "meta" / "loop").symlink_to(root / "meta", target_is_directory=True)  # a cycle
    (root / "meta" / "image" / "b.png").symlink_to(root / "meta" / "image" / "a.png")
    os.mkfifo(root / "meta" / "image" / "pipe")  # not a file: never a key
    assert sorted(store.keys()) == ["meta/image/a.png", "meta/image/b.png"]


def test_ping_and_api_mode_urls(object_store: ObjectStore) -> None:
    object_store.ping()
    object_store.put("meta/image/u.png", b"x", "image/png")
    # Default file_url_mode is "api": bytes are streamed by our API, no direct URL.
    assert object_store.presigned_url("meta/image/u.png") is None


# -- S3 only ------------------------------------------------------------------------------------
@pytest.mark.servers
def test_s3_presigned_url_and_private_bucket(s3_server: MotoS3) -> None:
    bucket = unique("presign-")
    store = open_objects(s3_settings(s3_server, bucket, file_url_mode="presigned",
                                     presign_seconds=600))  # fmt: skip
    store.put("meta/image/p.png", b"presigned bytes", "image/png")
    url = store.presigned_url("meta/image/p.png")
    assert url and "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    assert httpx.get(url, timeout=5).content == b"presigned bytes"
    # Unlike the original, no anonymous policy is ever set: the bucket stays private.
    client = s3_server.client()
    with pytest.raises(Exception, match=r"NoSuchBucketPolicy|policy"):
        client.get_bucket_policy(bucket)
    stat = client.stat_object(bucket, "meta/image/p.png")
    assert stat.content_type == "image/png"


@pytest.mark.servers
def test_s3_keys_stream_past_one_listing_page(s3_server: MotoS3) -> None:
    bucket = unique("paged-")
    store = open_objects(s3_settings(s3_server, bucket))
    names = [f"meta/image/{n:05d}.png" for n in range(1_050)]  # S3 pages hold 1,000
    for name in names:
        store.put(name, b"", "image/png")
    assert sorted(store.keys("meta/")) == names


@pytest.mark.servers
def test_s3_prefix_and_bucket_recreated(s3_server: MotoS3) -> None:
    bucket = unique("prefix-")
    store = open_objects(s3_settings(s3_server, f"{bucket}/tenant-a"))
    store.put("meta/image/k.png", b"k", "image/png")
    assert list(store.keys()) == ["meta/image/k.png"]
    client = s3_server.client()
    assert [o.object_name for o in client.list_objects(bucket, recursive=True)] == [
        "tenant-a/meta/image/k.png"
    ]
    # A bucket emptied and removed behind our back is recreated by the next write.
    client.remove_object(bucket, "tenant-a/meta/image/k.png")
    client.remove_bucket(bucket)
    store.put("meta/image/k2.png", b"k2", "image/png")
    assert store.get("meta/image/k2.png") == b"k2"


@pytest.mark.servers
def test_s3_stopped_server_fails_fast(s3_server: MotoS3) -> None:
    store = open_objects(s3_settings(s3_server, unique("down-")))
    store.put("meta/image/d.png", b"d", "image/png")
    with s3_server.down():
        for call in (store.ping, lambda: store.get("meta/image/d.png"),
                     lambda: store.put("meta/image/e.png", b"e", "image/png")):  # fmt: skip
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as err:
                call()
            assert err.value.store == "objects"
            assert time.monotonic() - started < 5, "a stopped S3 server must fail fast"
    # Back up (its state restored): the same client works again without being rebuilt.
    assert store.get("meta/image/d.png") == b"d"
