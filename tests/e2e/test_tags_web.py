"""Tags in a real browser: typed at upload, shown on the cards as text (never markup), the
gallery filtered by the tag select or a chip, and a search restricted to one tag."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.page import card, drop_files, edited_copy, jpeg_file, searches_done, wait_for_search

pytestmark = pytest.mark.e2e

CATS = ["chelsea", "coffee"]  # uploaded through the page with the tags typed below
MARKUP = "<b>bold</b>"  # a tag that must show as these characters, not as bold text


def uuids(page: Page, grid: str) -> list[str]:
    return page.eval_on_selector_all(f"{grid} .card", "cs => cs.map(c => c.dataset.metaUuid)")


def chips(page: Page, grid: str, meta_uuid: str) -> list[str]:
    return card(page, grid, meta_uuid).locator(".tag-chip").all_text_contents()


def test_tags_are_shown_filter_the_gallery_and_restrict_search(
    open_page: Any, photos: dict[str, bytes], web_url: str
) -> None:
    with httpx.Client(base_url=web_url, timeout=120) as client:
        for name, tags in (("rocket", ""), ("astronaut", "e2e-space")):
            r = client.post("/meta/image/file", files={"file": (f"{name}.jpg", photos[name])},
                            data={"meta_uuid": f"tags-{name}", "tags": tags})  # fmt: skip
            assert r.status_code == 200, r.text

    page = open_page()
    page.click("#tab-upload")
    page.fill("#upload-tags", f"e2e-cat, {MARKUP}")
    drop_files(page, "#upload-drop", [jpeg_file(n, photos[n]) for n in CATS])
    expect(page.locator('#upload-list .upload-row[data-state="indexed"]')).to_have_count(2)
    cats = [page.get_attribute(f'#upload-list [data-file-name="{n}.jpg"]', "data-meta-uuid")
            for n in CATS]  # fmt: skip
    assert all(cats), cats

    # Cards carry their tags as chips, the markup as plain text.
    page.click("#tab-gallery")
    expect(page.locator("#gallery .card")).to_have_count(4)
    assert chips(page, "#gallery", cats[0]) == ["e2e-cat", MARKUP]
    assert chips(page, "#gallery", "tags-astronaut") == ["e2e-space"]
    assert chips(page, "#gallery", "tags-rocket") == []
    assert page.locator("#gallery .tag-chip b").count() == 0

    # The tag select, filled from /tags with counts, filters the gallery.
    expect(page.locator('#gallery-tag option[value="e2e-cat"]')).to_have_text("e2e-cat (2)")
    page.select_option("#gallery-tag", "e2e-cat")
    expect(page.locator("#gallery .card")).to_have_count(2)
    assert sorted(uuids(page, "#gallery")) == sorted(cats)
    expect(page.locator("#gallery-status")).to_contain_text("2 images tagged “e2e-cat”")
    # A chip picks its tag: after "All images", the astronaut's chip shows only it.
    page.select_option("#gallery-tag", "")
    expect(page.locator("#gallery .card")).to_have_count(4)
    card(page, "#gallery", "tags-astronaut").locator(".tag-chip").click()
    expect(page.locator("#gallery .card")).to_have_count(1)
    expect(page.locator("#gallery-tag")).to_have_value("e2e-space")

    # A search restricted to a tag shows only hits that carry it; without, the match is first.
    page.click("#tab-search")
    page.select_option("#search-tag", "e2e-cat")
    before = searches_done(page)
    drop_files(page, "#search-drop", [jpeg_file("query", edited_copy(photos["rocket"]))])
    wait_for_search(page, before)
    expect(page.locator("#results .card")).to_have_count(2)
    assert sorted(uuids(page, "#results")) == sorted(cats)
    for meta_uuid in cats:
        assert "e2e-cat" in chips(page, "#results", meta_uuid)
    expect(page.locator("#search-status")).to_contain_text("tagged “e2e-cat”")
    page.select_option("#search-tag", "")  # a new filter runs the search again
    wait_for_search(page, before + 1)
    expect(page.locator("#results .card").first).to_have_attribute("data-meta-uuid", "tags-rocket")
