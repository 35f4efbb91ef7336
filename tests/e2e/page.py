"""Helpers that drive the web page in the e2e tests: files, drag and drop, paste, cards, waits."""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any
from urllib.parse import urlsplit

from PIL import Image
from playwright.sync_api import Page, expect


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


def accept_next_dialog(page: Page) -> list[str]:
    """Accept the next dialog (a confirmation); its message lands in the returned list."""
    messages: list[str] = []

    def accept(dialog: Any) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    return messages


def searches_done(page: Page) -> int:
    return int(page.get_attribute("#results", "data-searches") or 0)


def wait_for_search(page: Page, after: int) -> None:
    """Wait until the page has finished a search beyond the first `after`."""
    expect(page.locator("#results")).to_have_attribute("data-searches", str(after + 1))


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))
