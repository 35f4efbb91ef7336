"""The pipelines' Ray-free parts: listing sources, planning against the metadata, batch shapes."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from deployments.config import Settings, load_settings, settings_to_json
from deployments.stores import NewImage, object_key_for, open_metadata
from pipelines.batches import to_batch, to_rows
from pipelines.prepare import PREPARED_COLUMNS, blank_row, plan, prepare_batch
from pipelines.sources import list_source
from pipelines.switch import settings_overrides


def _jpeg(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _settings(tmp: Path) -> Settings:
    tmp.mkdir(parents=True, exist_ok=True)
    return load_settings(environ={}, overrides={
        "data_dir": str(tmp), "stores.metadata_uri": f"sqlite:///{tmp}/meta.db",
        "stores.objects_uri": f"file://{tmp}/objects", "stores.vectors_uri": f"{tmp}/v.db",
    })  # fmt: skip


def _row(meta_uuid: str, data: bytes, explicit: bool = False) -> dict[str, object]:
    row = blank_row("x.jpg", meta_uuid if explicit else "", -1)
    row.update(status="planned", sha256=hashlib.sha256(data).hexdigest(),
               meta_uuid=meta_uuid, explicit_uuid=explicit)  # fmt: skip
    return row


def _new(meta_uuid: str, data: bytes) -> NewImage:
    sha = hashlib.sha256(data).hexdigest()
    return NewImage(meta_uuid, hashlib.md5(data).hexdigest(), sha, "x.jpg",
                    object_key_for(sha, "jpg"), "image/jpeg", len(data), 96, 64)  # fmt: skip


def test_folder_listing_is_recursive_and_filters_extensions(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("1.JPG", "a/2.png", "a/b/3.webp", "a/b/4.tiff", "notes.txt", "a/.DS_Store"):
        (tmp_path / rel).write_bytes(b"x")
    listing = list_source(str(tmp_path), _settings(tmp_path / "d"))
    names = sorted(Path(it.uri).name for it in listing.items)
    assert names == ["1.JPG", "2.png", "3.webp", "4.tiff"]
    assert listing.ignored == 2


def test_manifests_csv_and_jsonl(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "d")
    (tmp_path / "csv.csv").write_text(
        "path,meta_uuid,tags\nimgs/a.jpg,,\n/abs/b.png,my-id,cat;dog\ns3://bkt/k/c.jpg,,\n"
        "d.jpg,not valid!,\n"
    )
    listing = list_source(str(tmp_path / "csv.csv"), settings)
    assert [it.uri for it in listing.items] == [
        str(tmp_path / "imgs/a.jpg"), "/abs/b.png", "s3://bkt/k/c.jpg"]  # fmt: skip
    assert listing.items[1].meta_uuid == "my-id" and listing.items[1].tags == ["cat", "dog"]
    assert listing.rejected[0]["reason"].startswith("invalid meta_uuid")
    (tmp_path / "j.jsonl").write_text(
        json.dumps({"key": "x.jpg", "tags": ["t"]}) + "\n\n[1]\n{broken\n"
    )
    listing = list_source(str(tmp_path / "j.jsonl"), settings)
    assert [it.uri for it in listing.items] == [str(tmp_path / "x.jpg")]
    assert [r["reason"].split(":")[0] for r in listing.rejected] == ["bad manifest line"] * 2


def test_plan_classifies_against_stored_rows(tmp_path: Path) -> None:
    md = open_metadata(_settings(tmp_path))
    md.create_schema()
    a, b, c = _jpeg(1), _jpeg(2), _jpeg(3)
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


def test_prepare_batch_reads_hashes_and_decodes(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "d")
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(_jpeg(5, (400, 300)))
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    src = to_batch([{"uri": str(p), "meta_uuid": "", "size": -1} for p in (good, bad)],
                   ["uri", "meta_uuid", "size"])  # fmt: skip
    out = to_rows(prepare_batch(src, settings_to_json(settings)))
    assert set(out[0]) == set(PREPARED_COLUMNS)
    assert out[0]["status"] == "new" and out[0]["meta_uuid"] == out[0]["md5"]
    assert len(out[0]["pixels"]) == 224 * 224 * 3 and (out[0]["width"], out[0]["height"]) == (
        400,
        300,
    )
    assert out[1]["status"] == "skipped" and out[1]["reason"].startswith("invalid:")
    assert out[1]["data"] == b"" and out[1]["pixels"] == b""


def test_settings_overrides_rebuild_the_same_settings(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    again = load_settings(environ={}, overrides=settings_overrides(settings))
    assert again == settings


def test_image_search_cli_wraps_the_same_commands() -> None:
    from deployments.cli import build_parser
    from pipelines import backfill, reconcile, reembed

    parser = build_parser()
    args = parser.parse_args(["backfill", "--source", "/x", "--batch-size", "4"])
    assert args.func is backfill.command and args.batch_size == 4
    args = parser.parse_args(["reconcile", "--fix", "--grace", "0"])
    assert args.func is reconcile.command and args.fix and args.grace == 0
    args = parser.parse_args(["reembed", "--model", "efficientnet-lite0", "--precision", "bf16"])
    assert args.func is reembed.command and args.switch_app is None
