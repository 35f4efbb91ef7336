"""The web page in a real browser: upload, search (drop, picker, paste), search similar,
gallery with delete, the errors a person must see, and a phone-width screen."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

JOURNEY = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle"]
NOT_AN_IMAGE = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just some words\n"}
SCORE = re.compile(r"^\d{1,3}\.\d$")  # 0-100, one decimal


def jpeg_file(name: str, data: bytes) -> dict[str, Any]:
    """A file payload for Playwright's set_input_files."""
    return {"name": f"{name}.jpg", "mimeType": "image/jpeg", "buffer": data}


def edited_copy(data: bytes) -> bytes:
    """What a person might search with: cropped by a tenth on every side, smaller, re-encoded."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    img = img.crop((w // 10, h // 10, w - w // 10, h - h // 10))
    img = img.resize((img.width * 4 // 5, img.height * 4 // 5), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=70)
    return out.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# In the page: File objects from {name, mimeType, b64} and a DataTransfer holding them, the way
# the browser hands dropped or pasted files to the page.
_DATA_TRANSFER_JS = """files => {
    const dt = new DataTransfer();
    for (const f of files) {
        const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
        dt.items.add(new File([bytes], f.name, {type: f.mimeType}));
    }
    return dt;
}"""


def _for_js(files: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for f in files:
        b64 = base64.b64encode(f["buffer"]).decode()
        out.append({"name": f["name"], "mimeType": f["mimeType"], "b64": b64})
    return out


def drop_files(page: Page, selector: str, files: list[dict[str, Any]]) -> None:
    """Drag files from the desktop onto an element."""
    page.eval_on_selector(
        selector,
        f"""(el, files) => {{
            const dataTransfer = ({_DATA_TRANSFER_JS})(files);
            for (const type of ["dragenter", "dragover", "drop"]) {{
                const init = {{bubbles: true, cancelable: true, dataTransfer}};
                el.dispatchEvent(new DragEvent(type, init));
            }}
        }}""",
        _for_js(files),
    )


def paste_file(page: Page, file: dict[str, Any]) -> None:
    """Paste an image into the page (as after "copy image" in another program)."""
    page.evaluate(
        f"""files => {{
            const clipboardData = ({_DATA_TRANSFER_JS})(files);
            const init = {{bubbles: true, cancelable: true, clipboardData}};
            document.body.dispatchEvent(new ClipboardEvent("paste", init));
        }}""",
        _for_js([file]),
    )


def card(page: Page, grid: str, meta_uuid: str) -> Any:
    return page.locator(f'{grid} .card[data-meta-uuid="{meta_uuid}"]')


def image_srcs(page: Page, grid: str) -> list[str]:
    return page.eval_on_selector_all(f"{grid} .card img", "imgs => imgs.map(i => i.src)")


def assert_thumbnails_only(page: Page, grid: str) -> None:
    srcs = image_srcs(page, grid)
    assert srcs, f"no images in {grid}"
    assert all(urlsplit(s).path.endswith("/thumbnail") for s in srcs), srcs


def watch_upload_concurrency(page: Page) -> None:
    """Record the most upload rows ever in flight at once, in window.maxInFlight."""
    page.evaluate("""() => {
        window.maxInFlight = 0;
        const list = document.getElementById("upload-list");
        new MutationObserver(() => {
            const n = list.querySelectorAll(
                '[data-state="uploading"], [data-state="processing"]').length;
            window.maxInFlight = Math.max(window.maxInFlight, n);
        }).observe(list, {subtree: true, childList: true, attributes: true,
                          attributeFilter: ["data-state"]});
    }""")


def searches_done(page: Page) -> int:
    return int(page.get_attribute("#results", "data-searches") or 0)


def wait_for_search(page: Page, after: int) -> None:
    """Wait until the page has finished a search beyond the first `after`."""
    expect(page.locator("#results")).to_have_attribute("data-searches", str(after + 1))


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


# -- tests --------------------------------------------------------------------------------------
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
    page = open_page()

    # Upload five photos through the file picker; at most three requests at a time.
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

    # Search by dropping an edited copy of one photo: the original comes first.
    page.click("#tab-search")
    chelsea = md5(photos["chelsea"])
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

    # Clicking a result opens the original image.
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

    # Top-k and threshold re-run the search.
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

    # "Search similar" on another result searches with that stored image: it comes first.
    second = results.nth(1)
    other_uuid = second.get_attribute("data-meta-uuid")
    other_name = second.get_attribute("data-file-name")
    second.locator("button.similar").click()
    expect(page.locator("#query-title")).to_have_text(other_name or "")
    expect(page.locator("#query-meta")).to_contain_text(f"stored image {other_uuid}")
    expect(results.first).to_have_attribute("data-meta-uuid", other_uuid or "")
    expect(results.first.locator(".distance")).to_have_text("d 0.0000")

    # The gallery: newest first, thumbnails only, the total; delete with confirmation.
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

    dialogs: list[str] = []

    def confirm(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", confirm)
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

    # Paste the edited copy again: the deleted original is no longer found.
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
    page.click("#page-next")
    expect(page.locator("#page-label")).to_have_text("Page 2 of 2")
    expect(gallery).to_have_count(total - 12)
    expect(gallery.first).to_have_attribute("data-meta-uuid", uuids[12])
    expect(page.locator("#page-next")).to_be_disabled()
    page.click("#page-prev")
    expect(page.locator("#page-label")).to_have_text("Page 1 of 2")
    assert_thumbnails_only(page, "#gallery")
    page.screenshot(path=str(artifacts / "phone-gallery.png"))
