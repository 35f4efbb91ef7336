"""The web page on a service that requires keys: it asks for one, remembers it, search works
with a read key, a delete says it needs write scope, and "Forget key" forgets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from image_search.keys import KeyStore
from tests.e2e.conftest import TIMEOUT_MS
from tests.e2e.page import (
    accept_next_dialog,
    card,
    edited_copy,
    jpeg_file,
    md5,
    searches_done,
    wait_for_search,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def keyed_app(
    make_app: Any, tmp_path_factory: pytest.TempPathFactory, photos: dict[str, bytes]
) -> Iterator[tuple[str, dict[str, str]]]:
    """An app of its own with keys required, two stored photos, and a read key for the page."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('keyed')}/meta.db"
    store = KeyStore(uri)
    store.create_schema()
    keys = {scope: store.create(f"e2e {scope}", scope).key for scope in ("read", "write")}
    store.close()
    url = make_app("webkeys", {"security.require_keys": True, "stores.metadata_uri": uri})
    with httpx.Client(base_url=url, timeout=120) as client:
        assert client.get("/meta/image/count").status_code == 401
        for name in ("coffee", "chelsea"):
            r = client.post(
                "/meta/image/file", files={"file": (f"{name}.jpg", photos[name])},
                headers={"Authorization": f"Bearer {keys['write']}"},
            )  # fmt: skip
            assert r.status_code == 200, r.text
    yield url, keys
    make_app.delete("webkeys")


def test_page_asks_for_a_key_then_search_works_and_delete_needs_write(
    browser: Any, keyed_app: tuple[str, dict[str, str]], photos: dict[str, bytes], artifacts: Path
) -> None:
    url, keys = keyed_app
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    js_errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: js_errors.append(str(exc)))
    try:
        page.goto(url + "/")
        page.wait_for_selector("html[data-ready]")

        # The first call (the image count) answered 401: the page asks, naming why.
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#key-reason")).to_contain_text("API key")
        expect(page.locator("#forget-key")).to_be_hidden()
        page.fill("#key-input", "not a key")
        page.click("#key-save")
        expect(page.locator("#key-error")).not_to_be_empty()  # checked before it is sent
        page.fill("#key-input", keys["read"])
        page.click("#key-save")
        expect(dialog).to_be_hidden()
        expect(page.locator("#image-count")).to_have_text("2 images")
        expect(page.locator("#forget-key")).to_be_visible()
        assert page.evaluate("localStorage.getItem('ise.apiKey')") == keys["read"]

        # Search with an edited copy: the original comes first, its thumbnail loads (the
        # cookie carries the key for <img>).
        before = searches_done(page)
        page.set_input_files("#search-file", jpeg_file("query", edited_copy(photos["chelsea"])))
        wait_for_search(page, before)
        first = page.locator("#results .card").first
        expect(first).to_have_attribute("data-meta-uuid", md5(photos["chelsea"]))
        first_img = first.locator("img")
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=first_img.element_handle()
        )

        # A delete with a read key: refused, and the page says why.
        page.click("#tab-gallery")
        target = card(page, "#gallery", md5(photos["coffee"]))
        expect(target).to_be_visible()
        confirmed = accept_next_dialog(page)
        target.locator("button.delete").click()
        error = page.locator("#messages .message-error")
        expect(error).to_contain_text("needs write scope")
        expect(error).to_contain_text("HTTP 403")
        assert confirmed and "Delete" in confirmed[0]
        expect(dialog).to_be_hidden()  # a 403 is not a reason to ask for another key
        with httpx.Client(base_url=url, timeout=60) as client:
            count = client.get("/meta/image/count", headers={"X-API-Key": keys["read"]})
            assert count.json()["image_count"] == 2

        # Forget: storage and cookie are gone, and the next call asks again.
        page.click("#forget-key")
        expect(page.locator("#forget-key")).to_be_hidden()
        assert page.evaluate("localStorage.getItem('ise.apiKey')") is None
        assert not [c for c in context.cookies() if c["name"] == "ise_key"]
        page.click("#gallery-refresh")
        expect(dialog).to_be_visible()
        page.click("#key-dialog button[value=cancel]")
        expect(dialog).to_be_hidden()
        expect(page.locator("#gallery-status")).to_have_text("The gallery could not be loaded.")
    except Exception:
        page.screenshot(path=str(artifacts / "keys-web-failed.png"), full_page=True)
        raise
    finally:
        context.close()
    assert not js_errors, f"uncaught JavaScript errors on the page: {js_errors}"
