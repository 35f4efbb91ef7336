"""Near-duplicate recall: 20 real photos, each searched with 10 edits, through the HTTP API."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from tests.conftest import AppFactory

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

Edit = Callable[[Image.Image], bytes]


def _save(im: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def crop(im: Image.Image) -> bytes:
    w, h = im.size
    return _save(im.crop((int(w * 0.08), int(h * 0.1), int(w * 0.9), int(h * 0.92))))


def recompress(im: Image.Image) -> bytes:
    return _save(im, quality=25)


def exif_rotated(im: Image.Image) -> bytes:
    # Pixels stored rotated, with the EXIF tag (6 = rotate 90 CW to view) that makes them upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(im.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())


def grayscale(im: Image.Image) -> bytes:
    return _save(im.convert("L"))


def cmyk(im: Image.Image) -> bytes:
    return _save(im.convert("CMYK"))


def png_alpha(im: Image.Image) -> bytes:
    rgba = im.convert("RGBA")
    alpha = Image.new("L", im.size, 255)
    w, h = im.size
    alpha.paste(0, (0, 0, w // 12, h))  # a transparent strip down the left edge
    rgba.putalpha(alpha)
    return _save(rgba, "PNG")


def letterbox(im: Image.Image) -> bytes:
    side = max(im.size)
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return _save(canvas)


def downscaled(im: Image.Image) -> bytes:
    return _save(im.resize((im.width // 3, im.height // 3), Image.Resampling.BILINEAR))


def brighter(im: Image.Image) -> bytes:
    return _save(ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.25)).enhance(0.9))


def blurred_border(im: Image.Image) -> bytes:
    return _save(ImageOps.expand(im.filter(ImageFilter.GaussianBlur(1.5)), border=12, fill="white"))


EDITS: dict[str, Edit] = {
    f.__name__: f
    for f in (
        crop,
        recompress,
        exif_rotated,
        grayscale,
        cmyk,
        png_alpha,
        letterbox,
        downscaled,
        brighter,
        blurred_border,
    )
}


def test_original_is_top_hit_for_edited_copies(
    make_app: AppFactory, photos: dict[str, bytes]
) -> None:
    url = make_app("neardup")
    client = httpx.Client(base_url=url, timeout=120)
    assert len(photos) == 20
    parts = [("file", (f"{name}.jpg", data)) for name, data in photos.items()]
    resp = client.post("/meta/image/files", files=parts)
    assert resp.status_code == 200, resp.text
    items = resp.json()["data"]
    uuid_of = {it["file_name"]: it["data"]["meta_uuid"] for it in items if it["succeed"]}
    assert len(uuid_of) == 20

    hits, misses = 0, []
    per_edit: dict[str, int] = dict.fromkeys(EDITS, 0)
    for name, data in photos.items():
        original = Image.open(io.BytesIO(data)).convert("RGB")
        for edit_name, edit in EDITS.items():
            r = client.post("/sample/file", files={"file": ("q", edit(original))},
                            data={"limit": "3"})  # fmt: skip
            assert r.status_code == 200, r.text
            top = r.json()["data"][0]
            if top["meta_uuid"] == uuid_of[f"{name}.jpg"]:
                hits += 1
                per_edit[edit_name] += 1
            else:
                misses.append(f"{name}/{edit_name} -> {top['file_name']} ({top['distance']:.3f})")
    total = len(photos) * len(EDITS)
    recall = hits / total
    report = {"top1": recall, "queries": total, "per_edit": per_edit, "misses": misses}
    out = Path("test-artifacts")
    out.mkdir(exist_ok=True)
    (out / "near_duplicates.json").write_text(json.dumps(report, indent=2))
    logger.info("near-duplicate top-1: %.3f (%d/%d); misses: %s", recall, hits, total, misses)
    make_app.delete("neardup")
    assert recall >= 0.95, report
