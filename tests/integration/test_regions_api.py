"""Region search over HTTP on the real Serve graph (the model, Milvus Lite, SQLite): a crop
and a 2x2 collage of a stored photo find it at rank 1 in regions mode with a plausible
`matched_region`; its delete removes its region vectors; `mode` is validated; a collection
without region vectors answers 409 to regions mode."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from image_search.config import load_settings
from image_search.regions import MAX_PARTS
from image_search.stores import open_regions
from tests.conftest import ROOT, AppFactory, embedded_overrides

pytestmark = pytest.mark.integration

LIBRARY = ["chelsea", "coffee", "rocket", "astronaut", "camera", "moon", "china", "flower"]
FILLERS = ["coins", "hubble_deep_field", "motorcycle"]  # collage cells, never indexed


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def photo(photos: dict[str, bytes], name: str) -> Image.Image:
    return Image.open(io.BytesIO(photos[name])).convert("RGB")


def collage(target: Image.Image, fillers: list[Image.Image]) -> bytes:
    """A 2x2 collage, 400x300 cells, 8 px white gutters, the target in the bottom-left cell."""
    canvas = Image.new("RGB", (2 * 400 + 24, 2 * 300 + 24), "white")
    cells = [fillers[0], fillers[1], target, fillers[2]]
    for i, im in enumerate(cells):
        fitted = im.copy()
        fitted.thumbnail((400, 300), Image.Resampling.LANCZOS)
        canvas.paste(fitted, (8 + (i % 2) * 408, 8 + (i // 2) * 308))
    return jpeg(canvas)


@pytest.fixture(scope="module")
def regions_app(make_app: AppFactory, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[str, dict[str, Any]]]:  # fmt: skip
    overrides = {**embedded_overrides(tmp_path_factory.mktemp("regions")), "search.regions": True}
    url = make_app("regions", overrides)
    yield url, overrides
    make_app.delete("regions")


def hits_of(r: httpx.Response) -> list[tuple[str, float, Any]]:
    return [(h["file_name"], h["distance"], h["matched_region"]) for h in r.json()["data"]]


def region_count(overrides: dict[str, Any], owner: int) -> int:
    settings = load_settings(ROOT / "config.yaml", environ={}, overrides=overrides)
    index = open_regions(settings)
    return len(index.get(index.part_ids([owner])))  # type: ignore[attr-defined]


def test_crop_and_collage_find_their_photo(
    regions_app: tuple[str, dict[str, Any]], photos: dict[str, bytes]
) -> None:
    url, overrides = regions_app
    client = httpx.Client(base_url=url, timeout=180)
    r = client.post("/meta/image/files",
                    files=[("file", (f"{n}.jpg", photos[n])) for n in LIBRARY])  # fmt: skip
    assert r.status_code == 200 and all(i["succeed"] for i in r.json()["data"]), r.text
    ids = {i["file_name"][:-4]: i["data"] for i in r.json()["data"]}
    coffee = photo(photos, "coffee")
    w, h = coffee.size
    # A corner crop of a third of the area (the bottom right): about one stored region.
    crop = jpeg(coffee.crop((w - int(0.58 * w), h - int(0.58 * h), w, h)))
    fillers = [photo(photos, n) for n in FILLERS]

    for query, cell in ((crop, None), (collage(photo(photos, "chelsea"), fillers), "2x2:2")):
        r = client.post("/sample/file", files={"file": ("q.jpg", query)},
                        data={"mode": "regions", "limit": "3"})  # fmt: skip
        assert r.status_code == 200, r.text
        top = r.json()["data"][0]
        want = "coffee" if cell is None else "chelsea"
        assert top["meta_uuid"] == ids[want]["meta_uuid"]
        m = top["matched_region"]
        assert m is not None, hits_of(r)
        assert all(0 <= m[k] <= 1 for k in ("x", "y", "w", "h"))
        if cell is None:
            assert m["x"] + m["w"] > 0.6 and m["y"] + m["h"] > 0.6  # a region at bottom right
        else:
            assert m["cell"] == cell
        # Result shape kept: one hit per image, ordered, distance and score.
        hits = r.json()["data"]
        assert len({x["meta_uuid"] for x in hits}) == len(hits) == 3
        assert 0 <= top["distance"] <= 2 and 0 <= top["score"] <= 100
    # The same image stored searched in regions mode finds itself first.
    r = client.get(f"/sample/meta/{ids['moon']['meta_uuid']}", params={"mode": "regions"})
    assert r.status_code == 200 and r.json()["data"][0]["meta_uuid"] == ids["moon"]["meta_uuid"]
    # Global mode on the same collection: no region matched.
    r = client.post("/sample/file", files={"file": ("q.jpg", crop)}, data={"mode": "global"})
    assert r.status_code == 200 and r.json()["data"][0]["matched_region"] is None

    # The count tells the web page that the mode can be chosen.
    assert client.get("/meta/image/count").json()["regions"] is True
    owner = ids["coffee"]["milvus_id"]
    assert 3 <= region_count(overrides, owner) <= MAX_PARTS
    assert client.delete(f"/meta/image/{ids['coffee']['meta_uuid']}").status_code == 200
    assert region_count(overrides, owner) == 0


def test_mode_is_validated_and_needs_regions(app_url: str, photos: dict[str, bytes]) -> None:
    client = httpx.Client(base_url=app_url, timeout=180)
    r = client.post("/sample/file", files={"file": ("q.jpg", photos["coffee"])},
                    data={"mode": "everything"})  # fmt: skip
    assert 400 <= r.status_code < 500 and r.json()["succeed"] is False, r.text
    r = client.get("/sample/meta/whatever", params={"mode": "nope"})
    assert 400 <= r.status_code < 500 and r.json()["succeed"] is False
    # The shared app's collection was built without region vectors.
    assert client.get("/meta/image/count").json()["regions"] is False
    r = client.post("/sample/file", files={"file": ("q.jpg", photos["coffee"])},
                    data={"mode": "regions"})  # fmt: skip
    assert r.status_code == 409 and "reembed --regions" in r.json()["message"], r.text
    r = client.post("/sample/file", files={"file": ("q.jpg", photos["coffee"])})
    assert r.status_code == 200  # auto: global there
    assert all(h["matched_region"] is None for h in r.json()["data"])
