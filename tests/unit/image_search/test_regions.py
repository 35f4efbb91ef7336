"""Region search: geometry, the per-image merge, its over-fetch bound, and IndexService's use
of a region index (write with the vector, delete with it, paging of merged results)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from image_search import regions as R
from image_search.errors import Conflict
from image_search.imaging import PreprocessSpec
from image_search.indexing import IndexService, IngestItem
from image_search.stores import Stores
from image_search.stores.base import RegionHit
from image_search.stores.metadata import SqlMetadataStore
from image_search.stores.objects import LocalObjectStore
from image_search.stores.vectors import region_row_id
from tests.fakes import DIM, MemoryVectorIndex, unit_vector
from tests.unit.image_search.test_indexing import item

# -- geometry -------------------------------------------------------------------------------------


def test_rmac_levels_1_2_counts_and_bounds() -> None:
    assert len(R.rmac_regions(14, 14)) == 1 + 4  # square: 1 + 2x2
    assert len(R.rmac_regions(19, 14)) == 2 + 6  # ~4:3: 2 + 3x2
    for w, h in ((14, 14), (25, 14), (14, 35)):
        for box in R.rmac_regions(w, h):
            assert 0 <= box[0] < box[2] <= 1 + 1e-9 and 0 <= box[1] < box[3] <= 1 + 1e-9
            # Squares in pixels.
            assert (box[2] - box[0]) * w == pytest.approx((box[3] - box[1]) * h)


def test_whole_size_and_window() -> None:
    window, size = R.whole_size(4000, 3000)
    assert window == (0.0, 0.0, 1.0, 1.0) and size == (608, 448)
    window, size = R.whole_size(1000, 4000)  # 1:4 is cut to its centre at 1:2.5
    assert window[1] == pytest.approx(0.1875) and window[3] == pytest.approx(0.8125)
    assert size == (448, 1120) and all(s % R.STRIDE == 0 for s in size)
    # A box of the window maps into the image.
    assert R.within(window, (0.0, 0.0, 1.0, 1.0)) == pytest.approx(window)


def test_max_parts_bounds_every_aspect() -> None:
    for w in range(300, 3000, 97):
        _, (iw, ih) = R.whole_size(w, 600)
        assert len(R.rmac_regions(iw / R.STRIDE, ih / R.STRIDE)) + 1 <= R.MAX_PARTS


def test_query_grids_need_min_cell() -> None:
    assert R.query_grids(96, 128) == []  # a thumbnail gets no cells
    assert R.query_grids(300, 250) == [2]
    assert R.query_grids(800, 600) == [2, 3]


def test_pool_average_is_unit_mean_of_covered_cells() -> None:
    fmap = np.zeros((2, 4, 4), np.float32)
    fmap[0, :2, :2] = 1.0  # top-left quarter: channel 0
    fmap[1, 2:, 2:] = 1.0  # bottom-right quarter: channel 1
    vecs = R.pool_average(fmap, [(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1), (0, 0, 1, 1)])
    np.testing.assert_allclose(vecs[0], [1, 0], atol=1e-6)
    np.testing.assert_allclose(vecs[1], [0, 1], atol=1e-6)
    np.testing.assert_allclose(vecs[2], [2**-0.5, 2**-0.5], atol=1e-6)


def jpeg(w: int, h: int) -> bytes:
    rng = np.random.default_rng(w * h)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_views_shapes() -> None:
    spec = PreprocessSpec(256, 224)
    iv = R.index_views(jpeg(1200, 800), spec, 10**8)
    assert iv.whole is not None and iv.whole.shape == (448, 672, 3)
    assert iv.thumb is not None and iv.thumb.shape == (224, 224, 3)
    qv = R.query_views(jpeg(700, 500), spec, 10**8, pooled=False)
    assert qv.cells is not None and qv.cells.shape == (13, 224, 224, 3)
    assert qv.cell_labels[0] == "2x2:0" and qv.cell_labels[-1] == "3x3:8"
    assert R.query_views(jpeg(120, 90), spec, 10**8, pooled=False).cells is None
    pooled = R.query_views(jpeg(700, 500), spec, 10**8, pooled=True)
    assert pooled.cells is None and pooled.whole is not None and len(pooled.cell_boxes) == 13


# -- merge ----------------------------------------------------------------------------------------


def C(owner: int, d: float, part: int = -1) -> R.Candidate:
    box = (0.5, 0.0, 1.0, 0.5) if part > 0 else None
    return R.Candidate(owner, d, part, box)


def test_merge_best_per_image_with_region_box() -> None:
    params = R.MergeParams(beta=0.0)
    out = R.merge([R.QueryHits([C(1, 0.9), C(1, 0.3, part=2), C(2, 0.5)])], params)
    assert [s.owner for s in out] == [1, 2]
    assert out[0].distance == pytest.approx(0.3)
    assert out[0].region is not None and (out[0].region.x, out[0].region.w) == (0.5, 0.5)
    assert out[1].region is None  # a whole-picture match


def test_merge_cell_penalty_and_query_adaptive_normalisation() -> None:
    # A bland cell is close to everything (mean of its 2 nearest 0.25); the global vector's
    # nearest are far (0.9, 1.0). Normalised, the global match of image 3 wins over the
    # bland cell's closer raw match of image 2.
    bland = R.QueryHits([C(2, 0.2), C(4, 0.3)], "2x2:1", (0.5, 0.0, 1.0, 0.5))
    whole = R.QueryHits([C(3, 0.9), C(5, 1.0)])
    out = R.merge([whole, bland], R.MergeParams(cell_penalty=0.05, beta=1.0, k_nearest=2))
    assert [s.owner for s in out][:2] == [3, 2]
    assert out[0].score == pytest.approx(0.9 - 0.95)
    assert out[1].score == pytest.approx(0.2 + 0.05 - 0.25)
    assert out[1].region is not None and out[1].region.cell == "2x2:1"
    assert out[1].region.cell_box == (0.5, 0.0, 0.5, 0.5)
    assert out[1].distance == pytest.approx(0.2)  # raw


def test_over_fetch_bound_gives_the_exact_top() -> None:
    """Merging each query vector's fetch_sizes nearest (global, and parts) gives the same top
    `want` as merging everything."""
    rng = np.random.default_rng(7)
    n_images, dim = 300, 16
    glob = rng.normal(size=(n_images, dim))
    parts = [(o, p, rng.normal(size=dim)) for o in range(n_images)
             for p in range(int(rng.integers(1, R.MAX_PARTS + 1)))]  # fmt: skip
    queries = rng.normal(size=(5, dim))

    def hits(q: np.ndarray, limit: int | None) -> R.QueryHits:
        g = sorted((float(np.sum((v - q) ** 2)), o) for o, v in enumerate(glob))
        r = sorted((float(np.sum((v - q) ** 2)), o, p) for o, p, v in parts)
        nj, np_ = (len(g), len(r)) if limit is None else R.fetch_sizes(limit)
        cands = [C(o, d) for d, o in g[:nj]] + [C(o, d, p + 1) for d, o, p in r[:np_]]
        return R.QueryHits(cands, None if q is queries[0] else "2x2:0")

    for want in (1, 5, 20):
        full = R.merge([hits(q, None) for q in queries])[:want]
        cut = R.merge([hits(q, want) for q in queries])[:want]
        assert [s.owner for s in cut] == [s.owner for s in full]
        assert [s.score for s in cut] == pytest.approx([s.score for s in full])


def test_first_part_fetch_suffices_or_is_fetched_again() -> None:
    """The typical-count first fetch stands only where it holds the images the bound does."""
    images, bound = R.fetch_sizes(5)
    first = R.first_part_fetch(images, bound)
    assert first == images * R.TYPICAL_PARTS < bound
    assert R.first_part_fetch(10, 50) == 50  # never beyond the bound
    spread = list(range(first))  # one part per image: plenty of images
    assert R.parts_suffice(spread, first, images)
    crowded = [i % (images - 1) for i in range(first)]  # one image short: fetch again
    assert not R.parts_suffice(crowded, first, images)
    assert R.parts_suffice(crowded[:-1], first, images)  # fewer than asked: that is all there is


# -- IndexService with a region index -------------------------------------------------------------


class MemoryRegionIndex:
    name = "regions"

    def __init__(self) -> None:
        self.dim, self.model_id = DIM, "test-model:fp32"
        self.rows: dict[int, tuple[int, int, np.ndarray, tuple[float, ...]]] = {}

    def upsert_parts(
        self, owners: Sequence[int], vectors: Sequence[np.ndarray], boxes: Sequence[Sequence[Any]]
    ) -> None:
        for o, vs, bs in zip(owners, vectors, boxes, strict=True):
            for p, (v, b) in enumerate(zip(vs, bs, strict=True)):
                self.rows[region_row_id(o, p)] = (o, p, v, b)

    def search_parts(self, vectors: np.ndarray, limit: int) -> list[list[RegionHit]]:
        out = []
        for q in vectors:
            hits = [RegionHit(o, p, float(np.sum((v - q) ** 2)), b)  # type: ignore[arg-type]
                    for o, p, v, b in self.rows.values()]  # fmt: skip
            out.append(sorted(hits, key=lambda h: h.distance)[:limit])
        return out

    def delete_owners(self, owners: Sequence[int]) -> None:
        gone = set(owners)
        self.rows = {k: r for k, r in self.rows.items() if r[0] not in gone}

    def owners_with_parts(self, owners: Sequence[int]) -> set[int]:
        return {r[0] for r in self.rows.values()} & set(owners)

    def owners(self, within: tuple[int, int] | None = None) -> Iterator[int]:
        lo, hi = within or (0, 2**63)
        yield from sorted({r[0] for r in self.rows.values() if r[1] == 0 and lo <= r[0] < hi})

    def count(self) -> int:
        return len(self.rows)

    def flush(self) -> None: ...
    def flush_if_due(self) -> None: ...
    def ping(self) -> None: ...
    def drop(self) -> None: ...


class RegionVectorIndex(MemoryVectorIndex):
    def has_regions(self) -> str:
        return R.RECIPE


@pytest.fixture
def rsvc(tmp_path: Path) -> IndexService:
    stores = Stores(
        SqlMetadataStore(f"sqlite:///{tmp_path}/meta.db", 5.0),
        LocalObjectStore(tmp_path / "objects"),
        RegionVectorIndex(DIM, "test-model:fp32"),
        MemoryRegionIndex(),
    )
    service = IndexService(stores, thumbnail_size=64)
    service.ensure_stores()
    return service


def parts_of(seed: int, n: int = 3) -> R.RegionVectors:
    vecs = np.stack([unit_vector(1000 * seed + p) for p in range(n)])
    return R.RegionVectors(vecs, [(0.0, 0.0, 1.0, 1.0)] + [(0.1 * p, 0.0, 0.5, 0.5)
                                                         for p in range(1, n)])  # fmt: skip


def with_parts(seed: int, meta_uuid: str | None = None) -> IngestItem:
    return dataclasses.replace(item(seed, meta_uuid), regions=parts_of(seed))


def test_regions_written_with_the_vector_and_deleted_with_it(rsvc: IndexService) -> None:
    regions = rsvc.stores.regions
    assert regions is not None
    rec = rsvc.ingest(with_parts(1))
    assert regions.owners_with_parts([rec.milvus_id]) == {rec.milvus_id}
    assert regions.count() == 3
    # Without its regions, new content is refused (retryable), leaving nothing.
    refused = rsvc.ingest_many([item(2)])[0]
    assert isinstance(refused, Exception) and rsvc.stores.metadata.count() == 1
    rsvc.delete(rec.meta_uuid)
    assert regions.count() == 0
    rsvc.ingest(with_parts(3))
    rsvc.delete_all()
    assert regions.count() == 0


def test_region_search_finds_a_region_and_pages(rsvc: IndexService) -> None:
    recs = [rsvc.ingest(with_parts(s)) for s in range(1, 9)]
    # Query: exactly region 2 of image 5 (and a cell that matches nothing in particular).
    query = unit_vector(1000 * 5 + 2)
    hits = rsvc.search_regions(query, None, 0, 3)
    assert hits[0].record.meta_uuid == recs[4].meta_uuid
    assert hits[0].distance == pytest.approx(0.0, abs=1e-5)
    assert hits[0].matched_region is not None and hits[0].matched_region.x == pytest.approx(0.2)
    everything = rsvc.search_regions(query, None, 0, 8)
    assert len({h.record.meta_uuid for h in everything}) == 8  # one hit per image
    paged = [h for off in range(0, 8, 3) for h in rsvc.search_regions(query, None, off, 3)]
    assert [h.record.meta_uuid for h in paged] == [h.record.meta_uuid for h in everything]


def test_region_search_fetches_again_where_parts_crowd(rsvc: IndexService) -> None:
    """Images with MAX_PARTS parts each near the query fill the first fetch with too few
    images: those query vectors are searched again at the bound, and the page is exact."""
    regions = rsvc.stores.regions
    assert isinstance(regions, MemoryRegionIndex)
    base = unit_vector(99)
    recs = []
    for s in range(1, 31):
        crowd = np.stack([base + 0.01 * s + 0.001 * p for p in range(R.MAX_PARTS)])
        crowd /= np.linalg.norm(crowd, axis=1, keepdims=True)
        boxes = [(0.0, 0.0, 1.0, 1.0)] * R.MAX_PARTS
        recs.append(rsvc.ingest(dataclasses.replace(
            item(s), regions=R.RegionVectors(crowd.astype(np.float32), boxes))))  # fmt: skip
    asked: list[int] = []
    search = regions.search_parts
    regions.search_parts = lambda v, limit: asked.append(limit) or search(v, limit)  # type: ignore[method-assign]
    hits = rsvc.search_regions(base, None, 0, 20)
    images, bound = R.fetch_sizes(20 + 16)
    assert asked == [R.first_part_fetch(images, bound), bound]
    assert [h.record.meta_uuid for h in hits] == [r.meta_uuid for r in recs[:20]]


def test_region_search_without_regions_is_a_conflict(tmp_path: Path) -> None:
    stores = Stores(SqlMetadataStore(f"sqlite:///{tmp_path}/m.db", 5.0),
                    LocalObjectStore(tmp_path / "o"), MemoryVectorIndex(DIM, "m:fp32"))  # fmt: skip
    with pytest.raises(Conflict, match="reembed --regions"):
        IndexService(stores).search_regions(unit_vector(1), None, 0, 5)
