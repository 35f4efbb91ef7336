"""The Duplicates tab in a real browser: groups side by side with thumbnails, distances and
facts; the threshold slider reloads them; "keep this one" asks, then deletes the others, which
leave the groups and the search results."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.e2e.page import (
    assert_thumbnails_only,
    card,
    drop_files,
    edited_copy,
    jpeg_file,
    no_horizontal_scroll,
    searches_done,
    wait_for_search,
)

pytestmark = pytest.mark.e2e

UNRELATED = ["rocket", "astronaut", "camera"]


def reencoded(data: bytes, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def stock(web_url: str, photos: dict[str, bytes]) -> dict[str, bytes]:
    """A photo, its bytes under a second name, a re-encode, an edit; unrelated photos."""
    files = {
        "dup-chelsea": photos["chelsea"],
        "dup-chelsea-copy": photos["chelsea"],
        "dup-chelsea-q60": reencoded(photos["chelsea"], 60),
        "dup-chelsea-edit": edited_copy(photos["chelsea"]),
        **{f"dup-{n}": photos[n] for n in UNRELATED},
    }
    with httpx.Client(base_url=web_url, timeout=120) as client:
        for name, data in files.items():
            r = client.post("/meta/image/file", files={"file": (f"{name}.jpg", data)},
                            data={"meta_uuid": name})  # fmt: skip
            assert r.status_code == 200, r.text
    return files


def loads(page: Page) -> int:
    return int(page.get_attribute("#dup-groups", "data-loads") or 0)


def wait_for_load(page: Page, after: int) -> None:
    expect(page.locator("#dup-groups")).to_have_attribute("data-loads", str(after + 1))


def members(page: Page, best: str) -> list[str]:
    return page.eval_on_selector_all(
        f'.dup-group[data-best="{best}"] .card', "cs => cs.map(c => c.dataset.metaUuid)"
    )


def set_slider(page: Page, value: float) -> None:
    """Drag the slider to a value: the browser fires input while moving, change on release."""
    page.eval_on_selector(
        "#dup-threshold",
        """(el, v) => {
            el.value = String(v);
            el.dispatchEvent(new Event("input", {bubbles: true}));
            el.dispatchEvent(new Event("change", {bubbles: true}));
        }""",
        value,
    )


def test_review_keep_one_and_the_others_are_gone(
    open_page: Any, photos: dict[str, bytes], web_url: str, artifacts: Path
) -> None:
    files = stock(web_url, photos)
    api = httpx.get(web_url + "/duplicates", timeout=120).json()
    (group,) = [g for g in api["data"] if g["best"].startswith("dup-chelsea")]
    expected = [m["meta_uuid"] for m in group["members"]]
    assert sorted(expected) == sorted(n for n in files if n.startswith("dup-chelsea"))
    best = group["best"]

    page = open_page()
    page.click("#tab-duplicates")
    wait_for_load(page, 0)
    expect(page.locator("#dup-threshold-value")).to_have_text(f"{api['threshold']:.2f}")
    block = page.locator(f'.dup-group[data-best="{best}"]')
    expect(block).to_be_visible()
    assert members(page, best) == expected  # the API's order: the copy to keep first
    first = card(page, f'.dup-group[data-best="{best}"]', best)
    expect(first.locator(".dup-badge")).to_have_text("Best copy")
    expect(first.locator(".distance")).to_have_text("d 0.0000")
    w, h = group["members"][0]["width"], group["members"][0]["height"]
    expect(first.locator(".facts").first).to_contain_text(f"{w}×{h}")
    assert_thumbnails_only(page, f'.dup-group[data-best="{best}"]')
    # Side by side: the cards of a group share one row.
    ys = {round(b["y"]) for b in (block.locator(".card").nth(i).bounding_box()
                                  for i in range(len(expected))) if b}  # fmt: skip
    assert len(ys) == 1, ys
    page.wait_for_function(
        "() => [...document.querySelectorAll('.dup-group img')].every(i => i.complete)"
    )
    page.screenshot(path=str(artifacts / "duplicates.png"), full_page=True)

    # The slider: at 0 only the byte copy stays with the photo; back up, the edits return.
    done = loads(page)
    set_slider(page, 0)
    wait_for_load(page, done)
    expect(page.locator("#dup-threshold-value")).to_have_text("0.00")
    exact = page.locator('.dup-group[data-best="dup-chelsea"]')
    expect(exact.locator(".card")).to_have_count(2)
    assert sorted(members(page, "dup-chelsea")) == ["dup-chelsea", "dup-chelsea-copy"]
    set_slider(page, api["threshold"])
    wait_for_load(page, done + 1)
    assert members(page, best) == expected

    # Keep the re-encode: the dialog names the others; Cancel deletes nothing.
    keep = "dup-chelsea-q60"
    others = [m for m in expected if m != keep]
    keep_card = card(page, f'.dup-group[data-best="{best}"]', keep)
    keep_card.locator("button.keep").click()
    dialog = page.locator("#dup-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#dup-dialog-keep")).to_have_text(f"{keep}.jpg")
    expect(page.locator("#dup-dialog-list li")).to_have_count(len(others))
    expect(page.locator("#dup-confirm")).to_have_text(f"Delete {len(others)} images")
    page.click("#dup-dialog button[value=cancel]")
    expect(dialog).to_be_hidden()
    assert members(page, best) == expected
    assert httpx.get(f"{web_url}/meta/image/{others[0]}", timeout=30).status_code == 200

    done = loads(page)
    keep_card.locator("button.keep").click()
    page.click("#dup-confirm")
    wait_for_load(page, done)
    expect(page.locator(f'.dup-group[data-best="{best}"]')).to_have_count(0)
    expect(card(page, "#dup-groups", keep)).to_have_count(0)  # alone now: in no group
    expect(page.locator("#messages")).to_contain_text(f"deleted {len(others)} images")
    for gone in others:
        assert httpx.get(f"{web_url}/meta/image/{gone}", timeout=30).status_code == 404
    after = httpx.get(web_url + "/duplicates", timeout=60).json()
    assert not {m["meta_uuid"] for g in after["data"] for m in g["members"]} & set(expected)

    # Search with an edited copy of the photo: the kept one comes first, the others never.
    page.click("#tab-search")
    before = searches_done(page)
    drop_files(page, "#search-drop", [jpeg_file("query", edited_copy(photos["chelsea"]))])
    wait_for_search(page, before)
    expect(page.locator("#results .card").first).to_have_attribute("data-meta-uuid", keep)
    for gone in others:
        expect(card(page, "#results", gone)).to_have_count(0)


def test_duplicates_tab_fits_a_phone(open_page: Any, photos: dict[str, bytes]) -> None:
    page = open_page(390, 844, is_mobile=True, has_touch=True, device_scale_factor=2)
    page.click("#tab-duplicates")
    expect(page.locator("#dup-groups")).to_have_attribute("data-loads", "1")
    for tab in ("search", "upload", "gallery", "duplicates"):
        box = page.locator(f"#tab-{tab}").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (tab, box)
    assert no_horizontal_scroll(page)
