"""The web page in a real browser: upload, search (drop, picker, paste), search similar,
gallery with delete, the errors a person must see, and a phone-width screen."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import ROOT
from tests.e2e.page import (
    accept_next_dialog,
    assert_thumbnails_only,
    card,
    drop_files,
    edited_copy,
    jpeg_file,
    md5,
    no_horizontal_scroll,
    paste_file,
    searches_done,
    wait_for_search,
    watch_upload_concurrency,
)

pytestmark = pytest.mark.e2e

JOURNEY = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle"]
NOT_AN_IMAGE = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just some words\n"}
SCORE = re.compile(r"^\d{1,3}\.\d$")  # 0-100, one decimal


def test_page_works_under_a_route_prefix(browser: Any, web_url: str) -> None:
    """The app lives under /web here and at / in production: every URL the page uses must be
    relative to it, and nothing may come from elsewhere (no CDN)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        for url in (web_url, web_url + "/", web_url + "/#gallery"):
            page.goto(url)
            page.wait_for_selector("html[data-ready]")
            expect(page.locator("#image-count")).to_have_text(re.compile(r"^[\d,]+ images?$"))
            # The stylesheet applied: the tabs are laid out, not a bare list of buttons.
            assert page.eval_on_selector(".topbar", "e => getComputedStyle(e).display") == "flex"
        expect(page.locator("#panel-gallery")).to_be_visible()

        # A proxy that serves the page as .../index.html: the page still finds its files.
        index_html = (ROOT / "deployments" / "web" / "index.html").read_text()
        page.route(web_url + "/index.html", lambda route: route.fulfill(
            status=200, content_type="text/html", body=index_html))  # fmt: skip
        page.goto(web_url + "/index.html")
        page.wait_for_selector("html[data-ready]")
        expect(page.locator("#image-count")).to_have_text(re.compile(r"^[\d,]+ images?$"))

        prefix = web_url + "/"
        strays = [u for u in requested if u != web_url and not u.startswith(prefix)]
        assert not strays, f"requests outside {prefix}: {strays}"
        assert any(u.endswith("/static/app.js") for u in requested)
    finally:
        context.close()


def test_upload_search_gallery_delete(
    open_page: Any, photos: dict[str, bytes], web_url: str, artifacts: Path
) -> None:
    """One person's session, step by step on one page: each step starts where the last ended."""
    page = open_page()
    chelsea = md5(photos["chelsea"])
    stored = _upload_five(page, photos, web_url)
    _search_by_drop(page, photos, chelsea, artifacts)
    _open_result(page, photos)
    _top_k_and_threshold(page, chelsea, stored)
    _search_similar(page)
    _gallery_delete(page, web_url, chelsea)
    _paste_after_delete(page, photos, chelsea)


def _upload_five(page: Page, photos: dict[str, bytes], web_url: str) -> int:
    """Upload five photos through the file picker, at most three at a time; returns the total."""
    page.click("#tab-upload")
    watch_upload_concurrency(page)
    limit = int(page.text_content("#upload-limit") or "0")
    page.set_input_files("#upload-files", [jpeg_file(n, photos[n]) for n in JOURNEY])
    rows = page.locator("#upload-list .upload-row")
    expect(rows).to_have_count(5)
    expect(page.locator('#upload-list .upload-row[data-state="indexed"]')).to_have_count(5)
    expect(page.locator("#upload-summary")).to_contain_text("5 indexed")
    assert limit == 3
    assert page.evaluate("window.maxInFlight") == limit  # three at once, never more
    for name in JOURNEY:
        row = page.locator(f'#upload-list .upload-row[data-file-name="{name}.jpg"]')
        expect(row).to_have_attribute("data-meta-uuid", md5(photos[name]))
        expect(row.locator(".upload-status")).to_have_text("Indexed")
        expect(row.locator("progress")).to_have_js_property("value", 1)
    stored = httpx.get(web_url + "/meta/image/count", timeout=30).json()["image_count"]
    expect(page.locator("#image-count")).to_have_text(f"{stored} images")
    return int(stored)


def _search_by_drop(page: Page, photos: dict[str, bytes], chelsea: str, artifacts: Path) -> None:
    """Search by dropping an edited copy of one photo: the original comes first."""
    page.click("#tab-search")
    drop_files(page, "#search-drop", [jpeg_file("chelsea-edited", edited_copy(photos["chelsea"]))])
    expect(page.locator("#query-title")).to_have_text("chelsea-edited.jpg")
    results = page.locator("#results .card")
    expect(results.first).to_have_attribute("data-meta-uuid", chelsea)
    first = results.first
    expect(first.locator(".file-name")).to_have_text("chelsea.jpg")
    expect(first.locator(".meta-uuid")).to_have_text(chelsea)
    expect(first.locator(".score")).to_have_text(SCORE)
    expect(first.locator(".distance")).to_contain_text("d 0.")
    expect(page.locator("#search-status")).to_contain_text("most similar first")
    assert_thumbnails_only(page, "#results")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')].every(i => i.complete)"
    )
    page.screenshot(path=str(artifacts / "search-results.png"))


def _open_result(page: Page, photos: dict[str, bytes]) -> None:
    """Clicking a result opens the original image."""
    first = page.locator("#results .card").first
    file_url = first.locator("a.thumb").get_attribute("href")
    assert file_url
    with page.expect_popup() as popup_info:
        first.locator("a.thumb").click()
    popup = popup_info.value
    popup.wait_for_load_state()
    assert popup.url == file_url
    original = httpx.get(file_url, timeout=30)
    assert original.status_code == 200 and original.content == photos["chelsea"]
    popup.close()


def _top_k_and_threshold(page: Page, chelsea: str, stored: int) -> None:
    """Top-k and threshold re-run the search."""
    results = page.locator("#results .card")
    done = searches_done(page)
    page.fill("#top-k", "2")
    page.press("#top-k", "Enter")
    wait_for_search(page, done)
    expect(results).to_have_count(2)
    page.fill("#threshold", "1.0")
    page.press("#threshold", "Enter")
    wait_for_search(page, done + 1)
    expect(results.first).to_have_attribute("data-meta-uuid", chelsea)
    distances = page.eval_on_selector_all(
        "#results .distance", "els => els.map(e => parseFloat(e.textContent.slice(2)))"
    )
    assert distances and all(d <= 1.0 for d in distances), distances
    page.fill("#threshold", "")
    page.fill("#top-k", "20")
    page.press("#top-k", "Enter")
    expect(results).to_have_count(min(stored, 20))


def _search_similar(page: Page) -> None:
    """The "Search similar" button of another result: that stored image comes first."""
    results = page.locator("#results .card")
    second = results.nth(1)
    other_uuid = second.get_attribute("data-meta-uuid")
    other_name = second.get_attribute("data-file-name")
    second.locator("button.similar").click()
    expect(page.locator("#query-title")).to_have_text(other_name or "")
    expect(page.locator("#query-meta")).to_contain_text(f"stored image {other_uuid}")
    expect(results.first).to_have_attribute("data-meta-uuid", other_uuid or "")
    expect(results.first.locator(".distance")).to_have_text("d 0.0000")


def _gallery_delete(page: Page, web_url: str, chelsea: str) -> None:
    """The gallery: newest first, thumbnails only, the total; delete with confirmation."""
    originals: list[str] = []
    page.on("request", lambda r: originals.append(r.url) if "/files/" in r.url else None)
    page.click("#tab-gallery")
    gallery = page.locator("#gallery .card")
    expect(gallery.first).to_be_visible()
    listed = httpx.get(web_url + "/meta/image", params={"limit": 24}, timeout=30).json()
    total = listed["total"]
    expect(page.locator("#gallery-status")).to_contain_text(f"{total} image")
    expect(gallery).to_have_count(min(total, 24))
    shown = page.eval_on_selector_all("#gallery .card", "cs => cs.map(c => c.dataset.metaUuid)")
    assert shown == [m["meta_uuid"] for m in listed["data"]]  # the API's order: newest first
    assert_thumbnails_only(page, "#gallery")

    dialogs = accept_next_dialog(page)
    card(page, "#gallery", chelsea).locator("button.delete").click()
    expect(card(page, "#gallery", chelsea)).to_have_count(0)
    assert dialogs and "chelsea.jpg" in dialogs[0], dialogs
    expect(page.locator("#gallery-status")).to_contain_text(f"{total - 1} image")
    expect(page.locator("#image-count")).to_contain_text(f"{total - 1} image")
    assert httpx.get(f"{web_url}/meta/image/{chelsea}", timeout=30).status_code == 404
    assert not originals, f"the gallery downloaded originals: {originals}"

    # Dismissing the confirmation keeps the image.
    keep = gallery.first.get_attribute("data-meta-uuid")
    page.once("dialog", lambda d: d.dismiss())
    gallery.first.locator("button.delete").click()
    expect(gallery.first.locator("button.delete")).to_be_enabled()  # no delete under way
    assert httpx.get(f"{web_url}/meta/image/{keep}", timeout=30).status_code == 200
    expect(card(page, "#gallery", keep or "")).to_have_count(1)


def _paste_after_delete(page: Page, photos: dict[str, bytes], chelsea: str) -> None:
    """Paste the edited copy again: the deleted original is no longer found."""
    page.click("#tab-search")
    done = searches_done(page)
    paste_file(page, jpeg_file("chelsea-pasted", edited_copy(photos["chelsea"])))
    expect(page.locator("#query-title")).to_have_text("chelsea-pasted.jpg")
    wait_for_search(page, done)
    expect(page.locator("#search-status")).to_contain_text("most similar first")
    expect(card(page, "#results", chelsea)).to_have_count(0)


def test_upload_outcomes_and_errors_are_shown(
    open_page: Any, photos: dict[str, bytes], artifacts: Path
) -> None:
    page = open_page()
    page.click("#tab-upload")
    flower = jpeg_file("flower", photos["flower"])
    page.set_input_files("#upload-files", [flower])
    expect(page.locator('#upload-list .upload-row[data-state="indexed"]')).to_have_count(1)

    # The same bytes again and a text file, dropped together: a duplicate and a rejection.
    drop_files(page, "#upload-drop", [flower, NOT_AN_IMAGE])
    duplicate = page.locator("#upload-list .upload-row").nth(1)
    rejected = page.locator('#upload-list .upload-row[data-file-name="notes.txt"]')
    expect(duplicate).to_have_attribute("data-state", "duplicate")
    expect(duplicate.locator(".upload-detail")).to_contain_text("already stored")
    expect(rejected).to_have_attribute("data-state", "rejected")
    expect(rejected.locator(".upload-status")).to_have_text("Rejected")
    expect(rejected.locator(".upload-detail")).to_contain_text("HTTP 415")
    expect(rejected.locator(".upload-detail")).to_contain_text("not a supported image")
    alert = page.locator("#messages .message-error")
    expect(alert).to_contain_text("1 of 2 files were rejected")
    expect(alert).to_be_visible()
    page.screenshot(path=str(artifacts / "upload-outcomes.png"))
    alert.locator(".message-close").click()
    expect(alert).to_have_count(0)

    # A search with something that is not an image: the reason is shown, not swallowed.
    page.click("#tab-search")
    page.set_input_files("#search-file", NOT_AN_IMAGE)
    expect(alert).to_contain_text("Search failed")
    expect(alert).to_contain_text("HTTP 415")
    expect(page.locator("#search-status")).to_have_text("The search failed.")

    # Bad control values are explained too (no request is sent for them).
    page.fill("#top-k", "0")
    page.press("#top-k", "Enter")
    expect(page.locator("#messages")).to_contain_text("Top-k must be a whole number")


def test_phone_width_and_gallery_pages(
    open_page: Any, photos: dict[str, bytes], web_url: str, artifacts: Path
) -> None:
    page = open_page(390, 844, is_mobile=True, has_touch=True, device_scale_factor=2)
    # The photos no other test uploads: more than one gallery page of 12, whatever ran before.
    rest = [n for n in photos if n not in {*JOURNEY, "flower"}]
    page.click("#tab-upload")
    page.set_input_files("#upload-files", [jpeg_file(n, photos[n]) for n in rest])
    stored = '#upload-list .upload-row:is([data-state="indexed"], [data-state="duplicate"])'
    expect(page.locator(stored)).to_have_count(len(rest))
    assert no_horizontal_scroll(page)

    page.click("#tab-search")
    page.set_input_files("#search-file", jpeg_file("coins-edited", edited_copy(photos["coins"])))
    results = page.locator("#results .card")
    expect(results.first).to_have_attribute("data-meta-uuid", md5(photos["coins"]))
    assert no_horizontal_scroll(page)
    # Two columns of cards, each inside the screen; the tabs stay on screen.
    boxes = [results.nth(i).bounding_box() for i in range(2)]
    assert all(b and b["x"] >= 0 and b["x"] + b["width"] <= 390 for b in boxes), boxes
    assert boxes[0] and boxes[1] and boxes[0]["y"] == boxes[1]["y"], boxes
    for tab in ("search", "upload", "gallery"):
        box = page.locator(f"#tab-{tab}").bounding_box()
        assert box and box["x"] + box["width"] <= 390, (tab, box)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .card img')].slice(0, 4)"
        ".every(i => i.complete)"
    )
    page.screenshot(path=str(artifacts / "phone-search.png"))

    # The gallery, 12 to a page: the pages follow the API's newest-first order.
    page.click("#tab-gallery")
    gallery = page.locator("#gallery .card")
    expect(gallery.first).to_be_visible()
    page.select_option("#page-size", "12")
    listed = httpx.get(web_url + "/meta/image", params={"limit": 24}, timeout=30).json()
    total, uuids = listed["total"], [m["meta_uuid"] for m in listed["data"]]
    assert 12 < total <= 24
    expect(page.locator("#page-label")).to_have_text("Page 1 of 2")
    expect(gallery).to_have_count(12)
    expect(gallery.first).to_have_attribute("data-meta-uuid", uuids[0])
    expect(page.locator("#page-prev")).to_be_disabled()
    assert no_horizontal_scroll(page)
    # Page 2 comes by cursor (the id of page 1's last image), not by offset.
    with page.expect_request(lambda r: "/meta/image?" in r.url) as asked:
        page.click("#page-next")
    assert f"before={listed['data'][11]['id']}" in asked.value.url, asked.value.url
    expect(page.locator("#page-label")).to_have_text("Page 2 of 2")
    expect(gallery).to_have_count(total - 12)
    expect(gallery.first).to_have_attribute("data-meta-uuid", uuids[12])
    expect(page.locator("#page-next")).to_be_disabled()
    page.click("#page-prev")
    expect(page.locator("#page-label")).to_have_text("Page 1 of 2")
    assert_thumbnails_only(page, "#gallery")
    page.screenshot(path=str(artifacts / "phone-gallery.png"))
