"""The backfill's CPU stage: planning rows against the metadata, reading and decoding."""

from __future__ import annotations

import hashlib
from pathlib import Path

from image_search.config import settings_to_json
from image_search.records import NewImage, object_key_for
from image_search.stores import open_metadata
from pipelines.batches import to_batch, to_rows
from pipelines.reading import READ_COLUMNS, blank_row, plan, read_batch
from tests.unit.pipelines.helpers import jpeg, settings_in


def _row(meta_uuid: str, data: bytes, explicit: bool = False) -> dict[str, object]:
    row = blank_row("x.jpg", meta_uuid if explicit else "", -1)
    row.update(status="planned", sha256=hashlib.sha256(data).hexdigest(),
               meta_uuid=meta_uuid, explicit_uuid=explicit)  # fmt: skip
    return row


def _new(meta_uuid: str, data: bytes) -> NewImage:
    sha = hashlib.sha256(data).hexdigest()
    return NewImage(meta_uuid, hashlib.md5(data).hexdigest(), sha, "x.jpg",
                    object_key_for(sha, "jpg"), "image/jpeg", len(data), 96, 64)  # fmt: skip


def test_plan_classifies_against_stored_rows(tmp_path: Path) -> None:
    md = open_metadata(settings_in(tmp_path))
    md.create_schema()
    a, b, c = jpeg(1), jpeg(2), jpeg(3)
    md.add(_new(hashlib.md5(a).hexdigest(), a))
    md.add(_new("taken", b))
    rows = [
        _row(hashlib.md5(a).hexdigest(), a),  # same uuid, same bytes
        _row("taken", c, explicit=True),  # uuid holds other bytes
        _row(hashlib.md5(b).hexdigest(), b),  # default uuid, content indexed as "taken"
        _row("second-name", a, explicit=True),  # explicit uuid for known content
        _row(hashlib.md5(c).hexdigest(), c),  # new
        _row(hashlib.md5(c).hexdigest(), c),  # the same file twice in one batch
    ]
    plan(md, rows)
    assert [r["status"] for r in rows] == [
        "duplicate", "conflict", "duplicate", "known", "new", "duplicate"]  # fmt: skip
    assert (rows[3]["width"], rows[3]["height"]) == (96, 64)  # copied from the stored row


def test_read_batch_reads_hashes_and_decodes(tmp_path: Path) -> None:
    settings = settings_in(tmp_path / "d")
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(jpeg(5, (400, 300)))
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    src = to_batch([{"uri": str(p), "meta_uuid": "", "size": -1} for p in (good, bad)],
                   ["uri", "meta_uuid", "size"])  # fmt: skip
    out = to_rows(read_batch(src, settings_to_json(settings)))
    assert set(out[0]) == set(READ_COLUMNS)
    assert out[0]["status"] == "new" and out[0]["meta_uuid"] == out[0]["md5"]
    assert len(out[0]["pixels"]) == 224 * 224 * 3 and (out[0]["width"], out[0]["height"]) == (
        400,
        300,
    )
    assert out[1]["status"] == "skipped" and out[1]["reason"].startswith("invalid:")
    assert out[1]["data"] == b"" and out[1]["pixels"] == b""
