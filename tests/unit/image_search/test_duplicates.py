"""Duplicate review's engine: union-find, exact vs near links, the best-copy rule, thresholds,
stable pages, and the online graph kept in step with the library (SQLite + an in-memory index).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from image_search.config import DuplicateSettings
from image_search.duplicates import (
    BEST,
    NEAR,
    SAME_BYTES,
    SAME_PIXELS,
    SAME_PIXELS_MATCH,
    DuplicateQuery,
    Library,
    LibraryTooLarge,
    Links,
    NeighborGraph,
    UnionFind,
    best_key,
    check_threshold,
    components,
    describe,
    read_library,
    search_links,
)
from image_search.errors import BadRequest
from image_search.indexing import IndexService
from image_search.records import ImageRecord, NewImage, milvus_id_for
from image_search.stores import Stores
from image_search.stores.base import VectorHit
from image_search.stores.metadata import SqlMetadataStore
from image_search.stores.objects import LocalObjectStore
from tests.fakes import DIM, MemoryVectorIndex, unit_vector

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class RangeIndex(MemoryVectorIndex):
    """The in-memory index with range search by brute force; counts the vectors it searched."""

    def __init__(self) -> None:
        super().__init__(DIM, "test-model:fp32")
        self.queries = 0

    def range_search(self, vectors: np.ndarray, radius: float, limit: int) -> list[list[VectorHit]]:
        self.queries += len(vectors)
        return [[h for h in self.search(v, len(self.rows)) if h.distance <= radius][:limit]
                for v in vectors]  # fmt: skip


def rec(id_: int, w: int = 10, h: int = 10, size: int = 100, age_days: int = 0,
        sha: str = "") -> ImageRecord:  # fmt: skip
    sha = sha or hashlib.sha256(str(id_).encode()).hexdigest()
    created = T0 - timedelta(days=age_days)
    return ImageRecord(id_, f"m{id_}", "h", sha, milvus_id_for(sha), f"{id_}.jpg", "p",
                       "image/jpeg", size, w, h, created, created)  # fmt: skip


def near(v: np.ndarray, distance: float, seed: int, side: float = 1.0) -> np.ndarray:
    """A unit vector at exactly `distance` (squared L2) from the unit vector v, towards a random
    direction (side -1: away from it, so two such vectors are far apart)."""
    other = side * (unit_vector(seed) - v * float(unit_vector(seed) @ v))
    other /= np.linalg.norm(other)
    cos = 1.0 - distance / 2.0
    out = cos * v + np.sqrt(1.0 - cos * cos) * other
    return (out / np.linalg.norm(out)).astype(np.float32)


# -- union-find and components ----------------------------------------------------------------
def test_union_find_joins_transitively_whatever_the_order() -> None:
    pairs = [(0, 1), (3, 4), (1, 2), (6, 5)]
    labels = set()
    for order in itertools.permutations(pairs):
        uf = UnionFind(7)
        for i, j in order:
            uf.union(i, j)
        labels.add(tuple(uf.labels().tolist()))
    # One answer for every order: each component is labelled by its smallest index.
    assert labels == {(0, 0, 0, 3, 3, 5, 5)}


def test_components_need_two_images_and_count_rows_sharing_a_content() -> None:
    lib = Library(np.array([10, 20, 30, 40, 50]), np.array([1, 1, 2, 1, 1]))
    links = Links(np.array([10, 40, 50]), np.array([20, 999, 777]), np.array([0.1, 0.1, 0.1]))
    found = sorted(c.tolist() for c in components(lib, links))
    # 10-20 linked; 30 alone but two rows share it; links to contents outside the library
    # (an orphan vector, a row deleted meanwhile) join nothing.
    assert found == [[10, 20], [30]]


def test_components_of_an_empty_library() -> None:
    assert components(Library(np.empty(0, np.int64), np.empty(0, np.int64)), Links()) == []


# -- the best copy and the members ------------------------------------------------------------
def test_best_is_most_pixels_then_largest_file_then_oldest_then_lowest_id() -> None:
    big = rec(5, w=20, h=20, size=10)
    assert min([rec(1, size=999, age_days=9), big], key=best_key) is big
    heavy = rec(6, size=200)
    assert min([rec(2, age_days=9), heavy], key=best_key) is heavy
    old = rec(7, age_days=3)
    assert min([rec(3), old], key=best_key) is old
    assert min([rec(9), rec(8)], key=best_key).id == 8


def test_describe_orders_members_and_names_each_match() -> None:
    best = rec(1, w=40, h=40)
    twin = rec(2, sha=best.sha256)  # the same bytes under another meta_uuid
    lossless = rec(3, size=50)
    far, close, lost = rec(4), rec(5), rec(6)
    v = unit_vector(1)
    vectors = {best.milvus_id: v, lossless.milvus_id: v.copy(),
               far.milvus_id: near(v, 0.4, 2), close.milvus_id: near(v, 0.1, 3)}  # fmt: skip
    group = describe([far, lost, close, twin, lossless, best], vectors)
    got = [(m.record.id, m.match) for m in group.members]
    assert got == [(1, BEST), (2, SAME_BYTES), (3, SAME_PIXELS_MATCH), (5, NEAR), (4, NEAR),
                   (6, NEAR)]  # fmt: skip
    distances = [m.distance for m in group.members]
    assert distances[:3] == [0.0, 0.0, 0.0] and distances[5] is None  # no vector: unknown
    assert distances[3] == pytest.approx(0.1, abs=1e-5)
    assert distances[4] == pytest.approx(0.4, abs=1e-5)
    assert group.best is best and group.size == 6
    assert group.fields() == {"size": 6, "best": "m1", "max_distance": round(distances[4], 6)}
    assert [m.fields()["keep"] for m in group.members] == [True] + [False] * 5


# -- thresholds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf"), -float("inf"), 1.0001])
def test_bad_thresholds_are_refused(bad: float) -> None:
    with pytest.raises(BadRequest, match=re.escape("threshold must be a number from 0 to 1.0")):
        check_threshold(bad, 1.0)


@pytest.mark.parametrize("good", [0.0, 0.5, 1.0])
def test_thresholds_from_zero_to_the_max_are_kept(good: float) -> None:
    assert check_threshold(good, 1.0) == good


def test_settings_refuse_a_default_above_the_max() -> None:
    with pytest.raises(ValueError, match=re.escape("at most duplicates.max_threshold")):
        DuplicateSettings(threshold=0.8, max_threshold=0.5)


# -- over real SQLite -------------------------------------------------------------------------
class Library_:
    """An IndexService over SQLite, a folder and RangeIndex, with images added by hand."""

    def __init__(self, tmp: Path) -> None:
        self.vectors = RangeIndex()
        stores = Stores(SqlMetadataStore(f"sqlite:///{tmp}/meta.db", 5.0),
                        LocalObjectStore(tmp / "objects"), self.vectors)  # fmt: skip
        self.svc = IndexService(stores)
        self.svc.ensure_stores()
        self.n = 0

    def add(self, vector: np.ndarray | None, w: int = 100, h: int = 100, size: int = 1000,
            same_as: str = "", name: str = "") -> ImageRecord:  # fmt: skip
        self.n += 1
        sha = same_as or hashlib.sha256(f"content {self.n}".encode()).hexdigest()
        new = NewImage(name or f"img{self.n}", "md5", sha, f"{name}.jpg", f"meta/image/{sha}.jpg",
                       "image/jpeg", size, w, h)  # fmt: skip
        if vector is not None:
            self.vectors.upsert([new.milvus_id], vector[None, :].astype(np.float32))
        return self.svc.stores.metadata.add(new)

    def page(self, threshold: float = 0.5, offset: int = 0, limit: int = 100,
             **settings: float) -> list[list[str]]:  # fmt: skip
        opts = DuplicateSettings(**settings)  # type: ignore[arg-type]
        page = self.svc.duplicates(DuplicateQuery(threshold, offset, limit, opts))
        self.last = page
        return [[m.record.meta_uuid for m in g.members] for g in page.groups]


@pytest.fixture
def lib(tmp_path: Path) -> Library_:
    return Library_(tmp_path)


def photo_set(lib: Library_) -> None:
    """A photo with a byte copy, a lossless re-encode, an edit at 0.3 and one at 0.7; a second
    photo with one edit at 0.2; three unrelated images."""
    a = unit_vector(100)
    best = lib.add(a, w=400, h=300, size=5000, name="a")
    lib.add(None, w=400, h=300, size=5000, same_as=best.sha256, name="a-copy")
    lib.add(a.copy(), w=400, h=300, size=4000, name="a-png")
    lib.add(near(a, 0.3, 1), w=200, h=150, name="a-edit")
    lib.add(near(a, 0.7, 1, side=-1), name="a-far")  # far from a-edit too
    b = unit_vector(200)
    lib.add(b, w=50, h=50, name="b")
    lib.add(near(b, 0.2, 3), w=60, h=60, name="b-edit")
    for seed in (7, 8, 9):
        lib.add(unit_vector(seed), name=f"other{seed}")


def test_groups_exact_and_near_copies_at_a_threshold(lib: Library_) -> None:
    photo_set(lib)
    assert lib.page(0.5) == [["a", "a-copy", "a-png", "a-edit"], ["b-edit", "b"]]
    assert lib.last.total == 2 and lib.last.images == 10 and lib.last.threshold == 0.5
    matches = [m.match for m in lib.last.groups[0].members]
    assert matches == [BEST, SAME_BYTES, SAME_PIXELS_MATCH, NEAR]
    # b-edit has more pixels than b: it is the one to keep.
    assert [m.distance for m in lib.last.groups[1].members] == [0.0, pytest.approx(0.2, abs=1e-5)]


def test_thresholds_move_the_near_copies_but_never_the_exact_ones(lib: Library_) -> None:
    photo_set(lib)
    assert lib.page(0.0) == [["a", "a-copy", "a-png"]]  # bytes and pixels: any threshold
    assert lib.page(0.25) == [["a", "a-copy", "a-png"], ["b-edit", "b"]]
    assert lib.page(0.8) == [["a", "a-copy", "a-png", "a-edit", "a-far"], ["b-edit", "b"]]
    assert lib.page(SAME_PIXELS / 2)[0] == ["a", "a-copy", "a-png"]


def test_a_chain_of_edits_is_one_group_with_distances_to_the_best(lib: Library_) -> None:
    a = unit_vector(1)
    lib.add(a, w=500, h=500, name="orig")
    step = near(a, 0.3, 2)
    lib.add(step, name="edit")
    lib.add(near(step, 0.3, 3), name="edit-of-edit")
    assert lib.page(0.35) == [["orig", "edit", "edit-of-edit"]]
    last = lib.last.groups[0].members[2]
    assert last.distance is not None and last.distance > 0.35  # linked through "edit"


def test_pages_are_stable_and_ordered_by_size_then_best_id(lib: Library_) -> None:
    sizes = [2, 4, 3, 2, 3, 2]
    for g, size in enumerate(sizes):
        v = unit_vector(1000 + g)
        lib.add(v, w=300, h=300, name=f"g{g}-best")
        for k in range(size - 1):
            lib.add(near(v, 0.05 * (k + 1), 50 * g + k), name=f"g{g}-{k}")
    everything = lib.page(0.5)
    firsts = [g[0] for g in everything]
    assert firsts == ["g1-best", "g2-best", "g4-best", "g0-best", "g3-best", "g5-best"]
    assert [len(g) for g in everything] == sorted(sizes, reverse=True)
    paged = [g for offset in range(0, 6, 4) for g in lib.page(0.5, offset=offset, limit=4)]
    assert paged == everything and lib.last.total == 6
    assert lib.page(0.5, offset=6, limit=4) == [] and lib.last.total == 6


def test_deletes_and_additions_update_groups_and_only_new_images_are_searched(
    lib: Library_,
) -> None:
    photo_set(lib)
    lib.page(0.5)
    assert lib.vectors.queries == 9  # one per stored vector (the byte copy shares one)
    lib.svc.delete("a-edit")
    lib.svc.delete("a-png")
    assert lib.page(0.5) == [["a", "a-copy"], ["b-edit", "b"]]
    lib.svc.delete("a-copy")
    assert lib.page(0.5) == [["b-edit", "b"]]
    assert lib.vectors.queries == 9  # deletions: no search at all
    lib.add(near(unit_vector(100), 0.1, 5), name="a-new")
    assert lib.page(0.5) == [["a", "a-new"], ["b-edit", "b"]]
    assert lib.vectors.queries == 10  # only the new image
    assert lib.page(0.4, max_threshold=0.9) == [["a", "a-new"], ["b-edit", "b"]]
    assert lib.vectors.queries == 10 + 8  # another search radius: all searched again


def test_few_neighbours_still_join_a_large_group(lib: Library_) -> None:
    a = unit_vector(1)
    lib.add(a, w=500, h=500, name="orig")
    for k in range(6):
        lib.add(near(a, 0.01 * (k + 1), k), name=f"copy{k}")
    groups = lib.page(0.5, neighbors=1)
    assert len(groups) == 1 and len(groups[0]) == 7


def test_a_library_over_the_online_cap_is_refused(lib: Library_) -> None:
    photo_set(lib)
    with pytest.raises(LibraryTooLarge, match=re.escape("pipelines.duplicates")) as err:
        lib.page(0.5, max_online_images=9)
    assert err.value.status == 413
    assert lib.vectors.queries == 0
    assert len(lib.page(0.5, max_online_images=10)) == 2


def test_library_is_read_in_keyset_pages(lib: Library_) -> None:
    photo_set(lib)
    whole = read_library(lib.svc.stores.metadata)
    paged = read_library(lib.svc.stores.metadata, page=3)
    assert whole.ids.tolist() == paged.ids.tolist() == sorted(whole.ids.tolist())
    assert whole.rows.tolist() == paged.rows.tolist() and whole.images == 10
    assert sorted(whole.rows.tolist()) == [1] * 8 + [2]


def test_search_links_skip_the_query_itself_and_contents_without_a_vector(
    lib: Library_,
) -> None:
    a = unit_vector(1)
    first = lib.add(a, name="x")
    second = lib.add(near(a, 0.2, 2), name="y")
    lonely = lib.add(None, name="z")
    ids: Sequence[int] = [first.milvus_id, second.milvus_id, lonely.milvus_id]
    links = search_links(lib.vectors, ids, 0.5, 4)
    pair = sorted([first.milvus_id, second.milvus_id])
    assert links.a.tolist() == [pair[0]] * 2 and links.b.tolist() == [pair[1]] * 2
    assert links.d == pytest.approx([0.2, 0.2], abs=1e-5)
    assert lib.vectors.queries == 2


def test_graph_starts_empty_and_an_empty_library_has_no_groups(lib: Library_) -> None:
    graph = NeighborGraph()
    page = graph.page(lib.svc.stores, DuplicateQuery(0.5, 0, 10, DuplicateSettings()))
    assert (page.groups, page.total, page.images) == ([], 0, 0)


def test_a_content_whose_vector_was_missing_is_searched_once_it_is_back(lib: Library_) -> None:
    a = unit_vector(1)
    lib.add(a, w=500, h=500, name="orig")
    late = lib.add(None, name="late")
    assert lib.page(0.5) == [] and lib.vectors.queries == 1
    assert lib.page(0.5) == [] and lib.vectors.queries == 1  # still nothing to search with
    lib.vectors.upsert([late.milvus_id], near(a, 0.1, 2)[None, :])  # as reconcile re-embeds
    assert lib.page(0.5) == [["orig", "late"]] and lib.vectors.queries == 2
    assert lib.page(0.5) == [["orig", "late"]] and lib.vectors.queries == 2
