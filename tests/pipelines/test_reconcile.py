"""reconcile: planted orphans and a missing vector are reported, then fixed (grace respected);
uploads in flight keep their data; crashed writers' pins are reported and purged."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from image_search.imaging import content_info
from image_search.indexing import LEASE_S, IndexService, IngestItem, content_key
from image_search.records import milvus_id_for, new_image, object_key_for, thumbnail_key_for
from image_search.stores import Stores
from pipelines import backfill, reconcile
from tests.pipelines.conftest import (
    SMALL,
    make_photo_dir,
    settings_for,
    store_overrides,
    stores_for,
)

pytestmark = pytest.mark.integration


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(1, 1280)).astype(np.float32)
    return v / np.linalg.norm(v)


def test_reconcile_reports_then_fixes(
    ray_cluster: dict[str, str], photos: dict[str, bytes], data_dir: Path, tmp_path: Path
) -> None:
    settings = settings_for(store_overrides(data_dir))
    src = make_photo_dir(tmp_path / "photos", photos, 6, bad=False)
    assert backfill.run(settings, str(src.root), SMALL)["indexed"] == 6
    st = stores_for(settings)
    rows = st.metadata.page(0, 10)

    # A crashed ingest: object and vector written, row never committed.
    crashed = hashlib.sha256(b"crashed ingest").hexdigest()
    crashed_key = object_key_for(crashed, "jpg")
    st.objects.put(crashed_key, b"\xff\xd8\xff crashed", "image/jpeg")
    st.vectors.upsert([milvus_id_for(crashed)], _unit(1))
    # A lone object, a lone vector, a thumbnail of nothing, one of a real row, a foreign key.
    lone_key = object_key_for(hashlib.sha256(b"lone").hexdigest(), "png")
    st.objects.put(lone_key, b"\x89PNG lone", "image/png")
    lone_vector = 4242
    st.vectors.upsert([lone_vector], _unit(2))
    dead_thumb = thumbnail_key_for(hashlib.sha256(b"deleted").hexdigest(), 256)
    st.objects.put(dead_thumb, b"\xff\xd8\xff thumb", "image/jpeg")
    live_thumb = thumbnail_key_for(rows[0].sha256, 256)
    st.objects.put(live_thumb, b"\xff\xd8\xff thumb", "image/jpeg")
    st.objects.put("exports/notes.txt", b"someone else's", "text/plain")
    # A row whose vector is gone.
    damaged = rows[1]
    original = st.vectors.get([damaged.milvus_id])[damaged.milvus_id]
    st.vectors.delete([damaged.milvus_id])

    report = reconcile.run(settings)
    assert report["consistent"] is False
    assert sorted(report["orphan_objects"]) == sorted([crashed_key, lone_key, dead_thumb])
    assert report["orphan_vectors"] == sorted([milvus_id_for(crashed), lone_vector])
    assert [c["sha256"] for c in report["rows_without_vector"]] == [damaged.sha256]
    assert report["rows_without_object"] == []
    assert report["foreign_objects"] == ["exports/notes.txt"]
    assert "fix" not in report and st.vectors.count() == 6 + 2 - 1  # report only: nothing moved

    # Within the grace period only what cannot be in flight goes: the lone vector (no object).
    fix = reconcile.run(settings, fix=True, grace_s=600, opts=SMALL)["fix"]
    assert fix["vectors_deleted"] == 1 and fix["vectors_kept_in_grace"] == [milvus_id_for(crashed)]
    assert fix["objects_deleted"] == 0 and len(fix["objects_kept_in_grace"]) == 3
    assert fix["reembedded"] == 1
    restored = st.vectors.get([damaged.milvus_id])[damaged.milvus_id]
    assert float(original @ restored) > 0.9999  # the same model on the same bytes

    final = reconcile.run(settings, fix=True, grace_s=0, opts=SMALL)
    assert final["fix"]["vectors_deleted"] == 1 and final["fix"]["objects_deleted"] == 3
    assert final["after"] == {**final["after"], "orphan_vectors": 0, "orphan_objects": 0,
                              "rows_without_vector": 0, "vectors": 6, "rows": 6}  # fmt: skip
    assert st.objects.exists(live_thumb) and st.objects.exists("exports/notes.txt")
    assert reconcile.run(settings)["consistent"] is True


def _backdate(st: Stores, milvus_id: int, seconds: float) -> None:
    """As if the content's last writer had stopped `seconds` ago."""
    from sqlalchemy import update

    from image_search.stores.metadata import Content

    with st.metadata.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            update(Content)
            .where(Content.milvus_id == milvus_id)
            .values(updated_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


def _upload(seed: int, meta_uuid: str) -> IngestItem:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    return IngestItem(new_image(content_info(data), meta_uuid, f"{seed}.png", 32, 32), data,
                      _unit(seed)[0])  # fmt: skip


def test_reconcile_fix_racing_uploads_and_crashed_writers(data_dir: Path) -> None:
    """No Ray needed: nothing here lacks its vector. An upload between its writes and its
    commit looks like an orphan to the scan; with no grace at all, its pin still keeps it."""
    settings = settings_for(store_overrides(data_dir))
    svc = IndexService.from_settings(settings)
    svc.ensure_stores()
    reports: list[dict[str, Any]] = []
    real_upsert = svc.stores.vectors.upsert

    def upsert_then_reconcile(ids: Any, vectors: Any) -> None:
        real_upsert(ids, vectors)
        reports.append(reconcile.run(settings, fix=True, grace_s=0))

    svc.stores.vectors.upsert = upsert_then_reconcile  # type: ignore[method-assign]
    rec = svc.ingest(_upload(1, "in-flight"))
    svc.stores.vectors.upsert = real_upsert  # type: ignore[method-assign]
    (mid_flight,) = reports
    assert mid_flight["orphan_objects"] == [rec.file_path]  # the scan saw it unreferenced...
    assert mid_flight["fix"]["objects_deleted"] == 0 and mid_flight["fix"]["vectors_deleted"] == 0
    st = stores_for(settings)
    assert st.objects.exists(rec.file_path) and st.vectors.get([rec.milvus_id])  # ...and kept it

    # A writer that died between its writes and its commit: its pin is reported once stale.
    crashed = _upload(2, "crashed")
    st.metadata.pin([content_key(crashed.new)], lease_s=60)
    svc._write_data([crashed])
    assert reconcile.run(settings, grace_s=0)["counts"]["ref_drift"] == 0  # may be in flight
    _backdate(st, crashed.new.milvus_id, LEASE_S + 1)
    report = reconcile.run(settings, grace_s=0)
    assert report["consistent"] is False and report["counts"]["ref_drift"] == 1
    assert report["ref_drift"][0]["key"]["milvus_id"] == crashed.new.milvus_id
    fixed = reconcile.run(settings, fix=True, grace_s=0)
    assert fixed["fix"]["contents_purged"] == 1
    assert fixed["fix"]["image_count"] == {"kept": 1, "rows": 1}  # the in-flight upload's row
    assert not st.objects.exists(crashed.new.file_path)
    assert not st.vectors.get([crashed.new.milvus_id])
    assert reconcile.run(settings)["consistent"] is True
