"""GET /duplicates on the real Serve graph (the model, Milvus Lite, SQLite): a photo, its byte
copy, its pixels as PNG, a re-encode and an edit form one group; another photo and its edit a
second; unrelated photos none. Then keep one: the others leave the groups and the search."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.edits import EDITS
from image_search.config import load_settings
from image_search.stores import milvus_index
from tests.conftest import ROOT, AppFactory, embedded_overrides

pytestmark = pytest.mark.integration

UNRELATED = ["rocket", "astronaut", "camera", "moon", "coins"]


def reencoded(data: bytes, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, format=fmt, **kw)
    return buf.getvalue()


def library(photos: dict[str, bytes]) -> dict[str, bytes]:
    chelsea = Image.open(io.BytesIO(photos["chelsea"])).convert("RGB")
    coffee = Image.open(io.BytesIO(photos["coffee"])).convert("RGB")
    return {
        "chelsea": photos["chelsea"],
        "chelsea-copy": photos["chelsea"],  # the same bytes under another meta_uuid
        "chelsea-png": reencoded(photos["chelsea"], "PNG"),  # the same pixels
        "chelsea-q60": reencoded(photos["chelsea"], "JPEG", quality=60),
        "chelsea-bright": EDITS["brighter"](chelsea),
        "coffee": photos["coffee"],
        "coffee-crop": EDITS["crop"](coffee),
        **{name: photos[name] for name in UNRELATED},
    }


def groups(body: dict[str, Any]) -> list[list[str]]:
    return [[m["meta_uuid"] for m in g["members"]] for g in body["data"]]


@pytest.fixture(scope="module")
def dup_app(make_app: AppFactory) -> Any:
    # Pinned, not the default: this library's heaviest edit sits between the two.
    url = make_app("dups", {"duplicates.threshold": 0.5})
    yield url
    make_app.delete("dups")


def test_duplicate_groups_thresholds_and_keep_one(dup_app: str, photos: dict[str, bytes]) -> None:
    client = httpx.Client(base_url=dup_app, timeout=120)
    files = library(photos)
    for name, data in files.items():
        r = client.post("/meta/image/file", files={"file": (f"{name}.img", data)},
                        data={"meta_uuid": name})  # fmt: skip
        assert r.status_code == 200, r.text

    body = client.get("/duplicates").json()
    assert body["succeed"] is True and body["threshold"] == 0.5 and body["images"] == 12
    assert body["total"] == 2, body
    chelsea, coffee = body["data"]
    # The PNG holds the same pixels as the largest file: it is the copy to keep.
    assert [m["meta_uuid"] for m in chelsea["members"][:3]] == [
        "chelsea-png", "chelsea", "chelsea-copy"]  # fmt: skip
    assert sorted(groups(body)[0][3:]) == ["chelsea-bright", "chelsea-q60"]
    assert [m["match"] for m in chelsea["members"]] == [
        "best", "same_pixels", "same_pixels", "near", "near"]  # fmt: skip
    assert all(0 < m["distance"] <= 0.5 for m in chelsea["members"][3:])
    assert groups(body)[1] == ["coffee", "coffee-crop"]
    assert 0 < coffee["members"][1]["distance"] <= 0.5
    for m in chelsea["members"] + coffee["members"]:
        assert m["size_bytes"] == len(files[m["meta_uuid"]]) and m["width"] and m["created_at"]

    # At 0 only what the model sees as identical; the search's own distance is the same one.
    exact = client.get("/duplicates", params={"threshold": 0}).json()
    assert groups(exact) == [["chelsea-png", "chelsea", "chelsea-copy"]]
    edit = chelsea["members"][3]
    hits = client.get("/sample/meta/chelsea-png", params={"limit": 12}).json()["data"]
    by_uuid = {h["meta_uuid"]: h["distance"] for h in hits}
    assert by_uuid[edit["meta_uuid"]] == pytest.approx(edit["distance"], abs=1e-4)
    assert all(by_uuid[n] > 0.5 for n in UNRELATED)

    # Bad thresholds: the envelope and a 400.
    for bad in ("-1", "nan", "2", "x"):
        r = client.get("/duplicates", params={"threshold": bad})
        assert r.status_code == 400 and r.json()["succeed"] is False, r.text

    # Keep the re-encode, delete the others: the group is gone, and so are they from search.
    keep = "chelsea-q60"
    for m in chelsea["members"]:
        if m["meta_uuid"] != keep:
            assert client.delete(f"/meta/image/{m['meta_uuid']}").status_code == 200
    after = client.get("/duplicates").json()
    assert groups(after) == [["coffee", "coffee-crop"]] and after["images"] == 8
    hits = client.post("/sample/file", files={"file": ("q.jpg", files["chelsea-bright"])},
                       data={"limit": "20"}).json()["data"]  # fmt: skip
    assert hits[0]["meta_uuid"] == keep
    assert not {h["meta_uuid"] for h in hits} & {m["meta_uuid"] for m in chelsea["members"]} - {
        keep}  # fmt: skip


def test_milvus_lite_range_search_is_inclusive_nearest_first_and_capped(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The store call the grouping rests on, against a real Milvus Lite server."""
    from image_search.stores.lite_server import stop_lite_server

    data = tmp_path_factory.mktemp("range")
    settings = load_settings(ROOT / "config.yaml", environ={}, overrides=embedded_overrides(data))
    index = milvus_index(settings, 4, "probe:fp32", "range_probe")
    try:
        base = np.array([1, 0, 0, 0], np.float32)
        rows = {i: np.array([np.cos(t), np.sin(t), 0, 0], np.float32)
                for i, t in enumerate([0.0, 0.2, 0.4, 0.6, 1.5], start=1)}  # fmt: skip
        index.upsert(list(rows), np.stack(list(rows.values())))
        index.flush()
        expected = {i: float(((v - base) ** 2).sum()) for i, v in rows.items()}
        radius = expected[3]  # exactly at a stored vector's distance: it is in range
        (hits,) = index.range_search(base[None, :], radius, 10)
        assert [h.id for h in hits] == [1, 2, 3]
        assert [h.distance for h in hits] == pytest.approx([expected[i] for i in (1, 2, 3)],
                                                           abs=1e-5)  # fmt: skip
        (capped,) = index.range_search(base[None, :], 4.0, 2)
        assert [h.id for h in capped] == [1, 2]
        two = index.range_search(np.stack([base, rows[5]]), 0.05, 10)
        assert [[h.id for h in q] for q in two] == [[1, 2], [5]]
        assert index.range_search(np.empty((0, 4), np.float32), 1.0, 10) == []
    finally:
        index.drop()
        stop_lite_server(data / "vectors.db")
