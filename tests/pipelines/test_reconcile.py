"""reconcile: planted orphans and a missing vector are reported, then fixed (grace respected)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from image_search.records import milvus_id_for, object_key_for, thumbnail_key_for
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
