"""Region vectors in the jobs: the backfill writes them into a collection that has them, the
re-embed builds a collection with them (--regions), reconcile sweeps orphan ones and rebuilds
missing ones. The stages are the service's code: the vectors a job stores are the ones the
service's RegionEmbedder makes of the same image.

The first tests call the stages directly (no Ray, Milvus Lite only); the last runs the jobs on
the test cluster with a handful of images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image_search.config import Settings, settings_to_json
from image_search.embedding import load_embedder, model_card
from image_search.embedding.feature_maps import RegionEmbedder, load_feature_maps
from image_search.regions import MAX_PARTS, RegionVectors, index_views
from image_search.stores import RegionIndex, open_metadata, open_regions, open_vectors
from image_search.stores.vectors import region_row_id
from pipelines import backfill, reconcile, reembed
from pipelines.batches import to_batch, to_rows
from pipelines.content import fetch_decode_batch
from pipelines.reading import read_batch
from pipelines.stages import EmbedStage, UpsertStage, WriteStage
from tests.pipelines.conftest import (
    SMALL,
    make_photo_dir,
    settings_for,
    store_overrides,
    stores_for,
)

pytestmark = pytest.mark.integration
IMAGES = 3


def regions_settings(data: Path, on: bool = True) -> Settings:
    return settings_for({**store_overrides(data), "search.regions": on})


def stored_parts(index: RegionIndex, owner: int) -> np.ndarray:
    """An image's stored parts in part order (MilvusRegionIndex: ids derived from the owner)."""
    ids = [region_row_id(owner, p) for p in range(MAX_PARTS)]
    got = index.get(ids)  # type: ignore[attr-defined]
    return np.stack([got[i] for i in ids if i in got])


def service_parts(settings: Settings, data: bytes) -> RegionVectors:
    """What the service (Decoder's index_views, Embedder's RegionEmbedder) makes of `data`."""
    model = load_embedder(settings.model)
    maps = load_feature_maps(model, settings.model.name, settings.model.threads)
    views = index_views(data, model_card(settings.model.name).spec, settings.limits.max_pixels)
    return RegionEmbedder(model, maps).embed([views])[0]


def test_stages_write_the_services_region_vectors(
    photos: dict[str, bytes], data_dir: Path, tmp_path: Path
) -> None:
    settings = regions_settings(data_dir)
    sj = settings_to_json(settings)
    assert backfill.ensure_stores(settings) is True  # the collection records its regions
    src = make_photo_dir(tmp_path / "photos", photos, IMAGES, bad=False)
    rows = [{"uri": str(src.root / rel), "meta_uuid": "", "size": -1} for rel in src.good]
    batch = read_batch(to_batch(rows, ["uri", "meta_uuid", "size"]), sj, regions=True)
    out = to_rows(WriteStage(sj)(EmbedStage(sj, 8, regions=True)(batch)))
    assert [r["status"] for r in out] == ["indexed"] * IMAGES, out

    st = stores_for(settings)
    assert st.regions is not None
    recs = {r.file_name: r for r in st.metadata.page(0, 10)}
    rel, data = next(iter(src.good.items()))
    expected = service_parts(settings, data)
    got = stored_parts(st.regions, recs[Path(rel).name].milvus_id)
    assert got.shape == expected.vectors.shape
    np.testing.assert_allclose(got, expected.vectors, atol=1e-5)

    # The re-embed's path: stored contents into a new collection with region vectors.
    new = reembed.target_settings(settings, settings.model.name, "auto", None, regions=True)
    todo = [c for part in reembed.missing_in(new, open_metadata(settings)) for c in part]
    assert len(todo) == IMAGES
    nj = settings_to_json(new)
    contents = [{"sha256": c.sha256, "milvus_id": c.milvus_id, "file_path": c.file_path}
                for c in todo]  # fmt: skip
    batch = fetch_decode_batch(to_batch(contents, ["sha256", "milvus_id", "file_path"]), nj,
                               regions=True)  # fmt: skip
    upserted = to_rows(UpsertStage(nj, new.stores.collection, regions=True)(
        EmbedStage(nj, 8, regions=True)(batch)))  # fmt: skip
    assert [r["status"] for r in upserted] == ["embedded"] * IMAGES
    target = open_regions(new)
    ids = [c.milvus_id for c in todo]
    assert target.owners_with_parts(ids) == set(ids)
    assert set(open_vectors(new).ids()) == set(ids)
    assert [c for part in reembed.missing_in(new, open_metadata(settings)) for c in part] == []


def test_reembed_refuses_an_existing_collection_without_regions(data_dir: Path) -> None:
    plain = regions_settings(data_dir, on=False)
    open_vectors(plain, "without_regions").ping()
    new = reembed.target_settings(plain, plain.model.name, "auto", "without_regions",
                                  regions=True)  # fmt: skip
    with pytest.raises(Exception, match="exists without region vectors"):
        reembed.missing_in(new, open_metadata(plain))


def test_reconcile_sweeps_orphan_region_vectors(data_dir: Path) -> None:
    settings = regions_settings(data_dir)
    backfill.ensure_stores(settings)
    st = stores_for(settings)
    assert st.regions is not None
    # A crash leftover: region vectors of an image that has neither a row nor a vector.
    lone = 4242
    vec = np.ones((2, st.regions.dim), np.float32) / np.sqrt(st.regions.dim)
    st.regions.upsert_parts([lone], [vec], [[(0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.5, 0.5)]])
    report = reconcile.run(settings)
    assert report["orphan_regions"] == [lone] and report["consistent"] is False
    fixed = reconcile.run(settings, fix=True, grace_s=600, opts=SMALL)
    assert fixed["fix"]["region_owners_deleted"] == 1  # no object: cannot be in flight
    assert st.regions.owners_with_parts([lone]) == set()
    assert fixed["after"]["orphan_regions"] == 0


def test_jobs_backfill_reembed_and_repair_regions(
    ray_cluster: dict[str, str], photos: dict[str, bytes], data_dir: Path, tmp_path: Path
) -> None:
    # A collection built without regions gains them through the re-embed ...
    stores = store_overrides(data_dir)  # one Milvus Lite port for the one data folder
    plain = settings_for({**stores, "search.regions": False})
    src = make_photo_dir(tmp_path / "photos", photos, IMAGES, bad=False)
    first = backfill.run(plain, str(src.root), SMALL)
    assert first["indexed"] == IMAGES and first["region_vectors"] is False
    report = reembed.run(plain, plain.model.name, "auto", opts=SMALL, regions=True)
    assert report["bulk"]["embedded"] == IMAGES
    assert report["config_to_set"]["search.regions"] is True
    new_collection = report["to"]["collection"]
    assert new_collection.endswith("_rmac")

    # ... and the backfill then writes region vectors into it, as the service does.
    on_new = settings_for({**stores, "stores.collection": new_collection,
                           "search.regions": True})  # fmt: skip
    more = make_photo_dir(tmp_path / "more", photos, IMAGES + 2, bad=False)
    second = backfill.run(on_new, str(more.root), SMALL)
    assert second["region_vectors"] is True and second["failed"] == 0
    assert second["indexed"] + second["duplicates"] == IMAGES + 2
    st = stores_for(on_new)
    assert st.regions is not None
    ids = [c[1] for c in st.metadata.iter_content()]
    assert st.regions.owners_with_parts(ids) == set(ids)

    # Reconcile rebuilds an image's missing region vectors.
    damaged = ids[0]
    st.regions.delete_owners([damaged])
    found = reconcile.run(on_new)
    assert [c["milvus_id"] for c in found["rows_without_regions"]] == [damaged]
    fixed = reconcile.run(on_new, fix=True, grace_s=600, opts=SMALL)
    assert fixed["fix"]["reembedded"] == 1 and fixed["after"]["rows_without_regions"] == 0
    assert st.regions.owners_with_parts([damaged]) == {damaged}
