"""Region search in a real browser: the "Match" control appears on a collection with region
vectors, a crop of a stored photo finds it first, every hit whose `matched_region` is a part
of the stored image has that part outlined in place on its thumbnail, and whole-picture mode
draws no box."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.e2e.page import drop_files, jpeg_file, searches_done, wait_for_search

pytestmark = pytest.mark.e2e

LIBRARY = ["coffee", "chelsea", "rocket", "astronaut"]


@pytest.fixture(scope="module")
def web_url(make_app: Any) -> Iterator[str]:
    """This module's own app (open_page opens it): a collection built with region vectors."""
    yield make_app("webregions", {"search.regions": True})
    make_app.delete("webregions")


def bottom_right_crop(data: bytes) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    out = io.BytesIO()
    img.crop((w - int(0.58 * w), h - int(0.58 * h), w, h)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_regions_mode_outlines_the_matched_part(
    open_page: Any, photos: dict[str, bytes], web_url: str
) -> None:
    with httpx.Client(base_url=web_url, timeout=180) as client:
        files = [("file", (f"{n}.jpg", photos[n])) for n in LIBRARY]
        r = client.post("/meta/image/files", files=files)
        assert r.status_code == 200 and all(i["succeed"] for i in r.json()["data"]), r.text
        ids = {i["file_name"]: i["data"]["meta_uuid"] for i in r.json()["data"]}
        coffee = ids["coffee.jpg"]

    # What the API says matched, per hit: the page must outline exactly the parts there.
    crop = bottom_right_crop(photos["coffee"])
    with httpx.Client(base_url=web_url, timeout=180) as client:
        r = client.post("/sample/file", files={"file": ("crop.jpg", crop)},
                        data={"mode": "regions", "limit": "20"})  # fmt: skip
        assert r.status_code == 200, r.text
    regions = {h["meta_uuid"]: h["matched_region"] for h in r.json()["data"]}
    parts = {u for u, m in regions.items() if m and (m["w"] < 0.999 or m["h"] < 0.999)}
    assert any(regions.values()) and parts, regions  # a cell or a region matched somewhere

    page = open_page()
    expect(page.locator("#search-mode-field")).to_be_visible()  # the count said: regions
    expect(page.locator("#search-mode")).to_have_value("regions")
    before = searches_done(page)
    drop_files(page, "#search-drop", [jpeg_file("crop", crop)])
    wait_for_search(page, before)
    expect(page.locator("#results .card").first).to_have_attribute("data-meta-uuid", coffee)
    expect(page.locator("#results .match-box")).to_have_count(len(parts))
    for meta_uuid, m in regions.items():
        found = page.locator(f'#results .card[data-meta-uuid="{meta_uuid}"]')
        expect(found.locator(".match-line")).to_have_count(1 if m else 0)
        if meta_uuid not in parts:
            continue
        thumb, part = (
            found.locator(".thumb").bounding_box(),
            found.locator(".match-box").bounding_box(),
        )
        assert thumb and part
        # The box's centre lies where the part's centre is on the (cover-cropped) square.
        w, h = next(
            (c["width"], c["height"]) for c in r.json()["data"] if c["meta_uuid"] == meta_uuid
        )
        short = min(w, h)
        cx = 0.5 + (m["x"] + m["w"] / 2 - 0.5) * w / short
        cy = 0.5 + (m["y"] + m["h"] / 2 - 0.5) * h / short
        assert abs(part["x"] + part["width"] / 2 - (thumb["x"] + cx * thumb["width"])) < 3
        assert abs(part["y"] + part["height"] / 2 - (thumb["y"] + cy * thumb["height"])) < 3

    page.select_option("#search-mode", "global")  # a new mode runs the search again
    wait_for_search(page, before + 1)
    expect(page.locator("#results .card")).to_have_count(len(LIBRARY))
    expect(page.locator("#results .match-box")).to_have_count(0)
    expect(page.locator("#results .match-line")).to_have_count(0)
