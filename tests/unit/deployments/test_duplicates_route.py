"""GET /duplicates over the real app and stand-in handles: groups, pages, thresholds, and a 4xx
envelope for every bad parameter and for a library over the online cap."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageEnhance

from image_search.config import DuplicateSettings
from image_search.stores.base import VectorHit
from tests.fakes import MemoryVectorIndex
from tests.unit.deployments.conftest import Service, jpeg
from tests.unit.deployments.test_routes import fails, upload


def _range_search(
    self: MemoryVectorIndex, vectors: np.ndarray, radius: float, limit: int
) -> list[list[VectorHit]]:
    return [[h for h in self.search(v, len(self.rows)) if h.distance <= radius][:limit]
            for v in vectors]  # fmt: skip


@pytest.fixture(autouse=True)
def range_search(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The in-memory index of these tests, with the range search the Milvus index has."""
    monkeypatch.setattr(MemoryVectorIndex, "range_search", _range_search, raising=False)
    yield


def encoded(data: bytes, fmt: str, brightness: float = 1.0, **kw: Any) -> bytes:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if brightness != 1.0:
        im = ImageEnhance.Brightness(im).enhance(brightness)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def stock(client: TestClient) -> dict[str, bytes]:
    """A photo, its bytes again under another id, its pixels as PNG, a brighter JPEG of it,
    and two unrelated images."""
    base = jpeg(1)
    files = {
        "photo": base,
        "photo-copy": base,
        "photo-png": encoded(base, "PNG"),
        "photo-bright": encoded(base, "JPEG", 1.1, quality=80),
        "other-1": jpeg(2),
        "other-2": jpeg(3),
    }
    for name, data in files.items():
        r = upload(client, data, f"{name}.img", meta_uuid=name)
        assert r.status_code == 200, r.text
    return files


def groups(body: dict[str, Any]) -> list[list[str]]:
    return [[m["meta_uuid"] for m in g["members"]] for g in body["data"]]


def test_groups_with_the_copy_to_keep_first(client: TestClient) -> None:
    files = stock(client)
    assert client.get("/duplicates").json()["threshold"] == DuplicateSettings().threshold
    r = client.get("/duplicates", params={"threshold": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["succeed"] is True and body["total"] == 1
    assert body["threshold"] == 0.5 and body["max_threshold"] == 1.0 and body["images"] == 6
    # The same pixels everywhere: the PNG is the largest file, so it is the one to keep.
    assert groups(body) == [["photo-png", "photo", "photo-copy", "photo-bright"]]
    group = body["data"][0]
    assert group["size"] == 4 and group["best"] == "photo-png"
    members = group["members"]
    assert [m["match"] for m in members] == ["best", "same_pixels", "same_pixels", "near"]
    assert [m["keep"] for m in members] == [True, False, False, False]
    assert members[0]["distance"] == members[1]["distance"] == 0.0
    assert 0 < members[3]["distance"] == group["max_distance"] <= 0.5
    for m in members:
        assert (m["width"], m["height"]) == (96, 64)
        assert m["size_bytes"] == len(files[m["meta_uuid"]]) and m["created_at"]
        assert m["thumbnail_url"].endswith(f"/meta/image/{m['meta_uuid']}/thumbnail")
    assert client.get(members[1]["thumbnail_url"]).status_code == 200


def test_same_bytes_are_grouped_even_at_threshold_zero(client: TestClient) -> None:
    stock(client)
    body = client.get("/duplicates", params={"threshold": 0}).json()
    assert groups(body) == [["photo-png", "photo", "photo-copy"]]
    r = upload(client, jpeg(2), "again.jpg", meta_uuid="other-1-again")
    assert r.status_code == 200
    body = client.get("/duplicates", params={"threshold": 0}).json()
    assert groups(body)[1] == ["other-1", "other-1-again"]
    assert [m["match"] for m in body["data"][1]["members"]] == ["best", "same_bytes"]


def test_the_threshold_moves_near_copies_in_and_out(client: TestClient) -> None:
    stock(client)
    wide = client.get("/duplicates", params={"threshold": 1.0}).json()
    bright = wide["data"][0]["members"][-1]
    assert bright["meta_uuid"] == "photo-bright"
    below = client.get("/duplicates", params={"threshold": bright["distance"] * 0.9}).json()
    assert groups(below) == [["photo-png", "photo", "photo-copy"]]
    at = client.get("/duplicates", params={"threshold": bright["distance"] * 1.01}).json()
    assert groups(at)[0][-1] == "photo-bright" and at["threshold"] > below["threshold"]


def test_pages_and_deletes(client: TestClient) -> None:
    stock(client)
    for i in range(3):  # two more groups of two, the same bytes each
        data = jpeg(10 + i)
        assert upload(client, data, meta_uuid=f"g{i}-a").status_code == 200
        assert upload(client, data, meta_uuid=f"g{i}-b").status_code == 200
    everything = client.get("/duplicates", params={"limit": 100}).json()
    assert everything["total"] == 4 and [len(g) for g in groups(everything)] == [4, 2, 2, 2]
    pages = [client.get("/duplicates", params={"offset": o, "limit": 2}).json() for o in (0, 2, 4)]
    assert [g for p in pages for g in groups(p)] == groups(everything)
    assert [p["total"] for p in pages] == [4, 4, 4] and pages[2]["data"] == []
    # Keep the best, delete the others: the group is gone, nothing else moved.
    for m in everything["data"][0]["members"][1:]:
        assert client.delete(f"/meta/image/{m['meta_uuid']}").status_code == 200
    after = client.get("/duplicates", params={"limit": 100}).json()
    assert groups(after) == groups(everything)[1:] and after["images"] == 9 - 3 + 3


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"threshold": "-0.1"}, "greater than or equal to 0"),
        ({"threshold": "nan"}, "finite number"),
        ({"threshold": "NaN"}, "finite number"),
        ({"threshold": "inf"}, "finite number"),
        ({"threshold": "-inf"}, "finite number"),
        ({"threshold": "1.01"}, "threshold must be a number from 0 to 1.0"),
        ({"threshold": "4"}, "threshold must be a number from 0 to 1.0"),
        ({"threshold": "abc"}, "valid number"),
        ({"threshold": "0.5.1"}, "valid number"),
        ({"threshold": ""}, "valid number"),
        ({"offset": "-1"}, "greater than or equal to 0"),
        ({"offset": str(2**31)}, "less than or equal to"),
        ({"offset": "x"}, "valid integer"),
        ({"offset": "1.5"}, "valid integer"),
        ({"limit": "0"}, "greater than or equal to 1"),
        ({"limit": "101"}, "less than or equal to 100"),
        ({"limit": "ten"}, "valid integer"),
    ],
)
def test_every_bad_parameter_is_a_400_envelope(
    client: TestClient, params: dict[str, str], why: str
) -> None:
    body = fails(client.get("/duplicates", params=params), 400)
    assert why in body["message"], body


def test_the_configured_default_threshold_is_used(make_service: Callable[..., Service]) -> None:
    service = make_service(**{"duplicates.threshold": 0.0})
    stock(service.client)
    body = service.client.get("/duplicates").json()
    assert body["threshold"] == 0.0 and groups(body) == [["photo-png", "photo", "photo-copy"]]


def test_a_library_over_the_online_cap_is_a_413_that_names_the_job(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(**{"duplicates.max_online_images": 5})
    stock(service.client)  # six images
    body = fails(service.client.get("/duplicates"), 413)
    assert "6 images" in body["message"] and "pipelines.duplicates" in body["message"]
    assert service.client.delete("/meta/image/other-2").status_code == 200
    assert service.client.get("/duplicates").json()["total"] == 1


def test_the_route_is_in_the_openapi_schema_with_its_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()["paths"]["/duplicates"]["get"]
    assert {"400", "413", "503"} <= set(spec["responses"])
    assert {p["name"] for p in spec["parameters"]} == {"threshold", "offset", "limit"}
