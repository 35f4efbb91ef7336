"""Tag filters over HTTP (stand-in handles): lists, counts, /tags, search, and bad input."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from image_search.records import TAG_MAX_CHARS
from tests.unit.deployments.conftest import jpeg
from tests.unit.deployments.test_routes import fails, upload


@pytest.fixture
def tagged(client: TestClient) -> TestClient:
    for n, tags in ((1, "red,shoe"), (2, "red"), (3, ""), (4, "shoe")):
        assert upload(client, jpeg(n), meta_uuid=f"i{n}", tags=tags).status_code == 200
    return client


def uuids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [d["meta_uuid"] for d in resp.json()["data"]]


def test_list_and_count_filter_by_every_tag_given(tagged: TestClient) -> None:
    c = tagged
    assert uuids(c.get("/meta/image", params={"tags": "red"})) == ["i2", "i1"]
    assert c.get("/meta/image", params={"tags": "red"}).json()["total"] == 2
    both = c.get("/meta/image", params=[("tags", "red"), ("tags", "shoe")])
    assert uuids(both) == ["i1"] and both.json()["total"] == 1
    assert uuids(c.get("/meta/image", params={"tags": "red,shoe"})) == ["i1"]  # or commas
    assert uuids(c.get("/meta/image", params={"tags": ""})) == ["i4", "i3", "i2", "i1"]
    counted = c.get("/meta/image/count", params={"tags": "shoe"}).json()
    assert (counted["image_count"], counted["vector_count"]) == (2, 4)


def test_tags_route_counts_and_follows_deletes(tagged: TestClient) -> None:
    c = tagged
    counts = c.get("/tags").json()["data"]
    assert counts == [{"tag": "red", "count": 2}, {"tag": "shoe", "count": 2}]
    assert c.get("/tags", params={"limit": 1}).json()["data"] == [{"tag": "red", "count": 2}]
    assert c.delete("/meta/image/i1").status_code == 200
    counts = c.get("/tags").json()["data"]
    assert counts == [{"tag": "red", "count": 1}, {"tag": "shoe", "count": 1}]


def test_search_with_tags_returns_only_tagged_hits(tagged: TestClient) -> None:
    c = tagged
    plain = c.post("/sample/file", files={"file": ("q.jpg", jpeg(3))})
    assert uuids(plain)[0] == "i3"
    hits = c.post("/sample/file", files={"file": ("q.jpg", jpeg(3))}, data={"tags": "red"})
    assert sorted(uuids(hits)) == ["i1", "i2"]
    mine = c.post("/sample/file", files={"file": ("q.jpg", jpeg(2))}, data={"tags": "red"})
    assert uuids(mine)[0] == "i2" and mine.json()["data"][0]["distance"] < 1e-6
    stored = c.get("/sample/meta/i4", params=[("tags", "shoe"), ("tags", "red")])
    assert uuids(stored) == ["i1"]
    assert uuids(c.get("/sample/meta/i4", params={"tags": "nope"})) == []


@pytest.mark.parametrize(
    "tags",
    ["x" * (TAG_MAX_CHARS + 1), ",".join(str(i) for i in range(65)), "tab\there"],
)
def test_bad_tag_filters_are_400_in_the_envelope(tagged: TestClient, tags: str) -> None:
    c = tagged
    assert "tag" in fails(c.get("/meta/image", params={"tags": tags}), 400)["message"]
    fails(c.get("/meta/image/count", params={"tags": tags}), 400)
    fails(c.get("/sample/meta/i1", params={"tags": tags}), 400)
    fails(c.post("/sample/file", files={"file": ("q.jpg", jpeg(1))}, data={"tags": tags}), 400)
    fails(upload(c, jpeg(9), tags=tags), 400)
    fails(c.get("/tags", params={"limit": 0}), 400)
