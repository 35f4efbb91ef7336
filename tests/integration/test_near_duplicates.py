"""Near-duplicate recall: 20 real photos, each searched with 10 edits, through the HTTP API."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bench.edits import EDITS
from tests.conftest import AppFactory

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)


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
