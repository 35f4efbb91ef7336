"""Backfill sources: folders, manifests (S3 listing runs against a real S3 server elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.sources import list_source
from tests.unit.pipelines.helpers import settings_in


def test_folder_listing_is_recursive_and_filters_extensions(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("1.JPG", "a/2.png", "a/b/3.webp", "a/b/4.tiff", "notes.txt", "a/.DS_Store"):
        (tmp_path / rel).write_bytes(b"x")
    listing = list_source(str(tmp_path), settings_in(tmp_path / "d"))
    names = sorted(Path(it.uri).name for it in listing.items)
    assert names == ["1.JPG", "2.png", "3.webp", "4.tiff"]
    assert listing.ignored == 2


def test_manifests_csv_and_jsonl(tmp_path: Path) -> None:
    settings = settings_in(tmp_path / "d")
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
