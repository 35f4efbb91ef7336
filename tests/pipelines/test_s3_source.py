"""The backfill's S3 source against a real S3 server (moto): listing, size limit, reading."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from image_search.config import load_settings, settings_to_json
from pipelines.batches import to_batch, to_rows
from pipelines.reading import read_batch
from pipelines.sources import list_source
from tests.servers import MotoS3

pytestmark = pytest.mark.servers


def test_s3_prefix_is_listed_and_read(
    s3_server: MotoS3, photos: dict[str, bytes], tmp_path: Path
) -> None:
    client = s3_server.client()
    bucket = "backfill-source"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    names = sorted(photos)[:3]
    for name in names:
        data = photos[name]
        client.put_object(bucket, f"in/{name}.jpg", io.BytesIO(data), len(data))
    client.put_object(bucket, "in/notes.txt", io.BytesIO(b"text"), 4)
    client.put_object(bucket, "other/x.jpg", io.BytesIO(photos[names[0]]), len(photos[names[0]]))
    big = photos["astronaut"]  # over the limit set below: refused before it is downloaded
    client.put_object(bucket, "in/sub/big.jpg", io.BytesIO(big * 20), len(big) * 20)

    settings = load_settings(environ={}, overrides={
        "stores.metadata_uri": f"sqlite:///{tmp_path}/meta.db",
        "stores.objects_uri": f"file://{tmp_path}/objects", "stores.vectors_uri": f"{tmp_path}/v",
        "stores.s3_endpoint": s3_server.endpoint, "stores.s3_access_key": s3_server.access_key,
        "stores.s3_secret_key": s3_server.secret_key, "stores.s3_region": "us-east-1",
        "limits.max_upload_bytes": len(big) * 10,
    })  # fmt: skip
    listing = list_source(f"s3://{bucket}/in", settings)
    uris = [it.uri for it in listing.items]
    assert uris == [f"s3://{bucket}/in/{n}.jpg" for n in names] + [f"s3://{bucket}/in/sub/big.jpg"]
    assert listing.ignored == 1

    batch = to_batch([it.row() for it in listing.items], ["uri", "meta_uuid", "size"])
    rows = to_rows(read_batch(batch, settings_to_json(settings)))
    assert [r["status"] for r in rows] == ["new", "new", "new", "skipped"]
    assert rows[0]["data"] == photos[names[0]] and rows[0]["file_name"] == f"{names[0]}.jpg"
    assert rows[3]["reason"].startswith("too_large:")
