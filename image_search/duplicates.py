"""Duplicate review: groups of copies and near-duplicates, with the copy worth keeping first.

Two images are linked when their vectors are within the threshold: the squared-L2 distance
of the engine's unit vectors, the `distance` a search returns (0 = the same to the model,
about 1 and above = different photos). Rows that share a content (the same bytes under several
meta_uuids) share one vector, so they are linked whatever the threshold, and so are contents
whose vectors are equal (distance <= SAME_PIXELS: the model saw the same pixels, e.g. a
lossless re-encode). A group is a connected component of the links holding two images or
more: an edit of an edit joins its original's group even when it is farther from it than the
threshold, and every member carries its distance to the group's best image.

The best image is the one to keep: the most pixels, then the largest file, then the oldest
(created_at), then the lowest id (best_key). Groups are ordered by size, largest first, then
by their best image's id, so pages are stable while the library does not change.

How the links are found, in a way that scales: each content's vector is range-searched (Milvus
`radius` on the L2 metric; VectorIndex.range_search) for its `neighbors` nearest within the
radius, a block of query vectors per call; the links join a union-find over the library's
contents, which costs memory in the number of images, never in the number of pairs. The HTTP
route keeps the links within max_threshold of a library of at most max_online_images images in
memory (NeighborGraph: kept in step with the library by searching only contents added since,
and dropping links of those deleted) and groups them for each request's threshold; the job
pipelines.duplicates streams them from Ray Data tasks for a library of any size.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from image_search.config import DuplicateSettings
from image_search.errors import BadRequest, SearchEngineError
from image_search.records import ImageRecord
from image_search.stores import MetadataStore, Stores, VectorIndex

# At or below this distance two vectors are equal to the model (float32 noise is ~1e-7):
# measured 0 for 19 of 20 photos saved again losslessly (docs/duplicates.md).
SAME_PIXELS = 1e-6
# How a member relates to its group's best image.
BEST, SAME_BYTES, SAME_PIXELS_MATCH, NEAR = "best", "same_bytes", "same_pixels", "near"
# Contents per keyset page when the library is read, and ids per metadata/vector lookup.
LIBRARY_PAGE = 10_000
LOOKUP_CHUNK = 1000
Ids = Sequence[int] | np.ndarray  # milvus ids


class LibraryTooLarge(SearchEngineError):
    """More images than the HTTP route groups online: the job handles any size."""

    status = 413


def check_threshold(threshold: float, max_threshold: float) -> float:
    """A threshold a request may ask for, or a 400 that says which ones are."""
    if not math.isfinite(threshold) or threshold < 0 or threshold > max_threshold:
        raise BadRequest(
            f"threshold must be a number from 0 to {max_threshold} (duplicates.max_threshold), "
            f"not {threshold}"
        )
    return threshold


def link_distance(threshold: float) -> float:
    """The distance up to which two contents are linked: equal vectors always are."""
    return max(threshold, SAME_PIXELS)


def best_key(rec: ImageRecord) -> tuple[int, int, Any, int]:
    """Sorts the copy to keep first: most pixels, largest file, oldest, lowest id."""
    return (-(rec.width * rec.height), -rec.size_bytes, rec.created_at, rec.id)


def squared_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The search's distance, computed here for members that were linked through others."""
    diff = np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)
    return max(0.0, float(np.dot(diff, diff)))


# -- union-find -----------------------------------------------------------------------------
class UnionFind:
    """Components over dense indexes 0..n-1, in 8 bytes per image (an array, not objects).

    The root of a component is its smallest index, so labels do not depend on link order.
    """

    def __init__(self, n: int) -> None:
        self.parent = array("q", range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            lo, hi = (ri, rj) if ri < rj else (rj, ri)
            self.parent[hi] = lo

    def union_all(self, a: Ids, b: Ids) -> None:
        for i, j in zip(np.asarray(a).tolist(), np.asarray(b).tolist(), strict=True):
            self.union(i, j)

    def labels(self) -> np.ndarray:
        """Each index's root."""
        return np.fromiter((self.find(i) for i in range(len(self.parent))), dtype=np.int64,
                           count=len(self.parent))  # fmt: skip


# -- the library and its links --------------------------------------------------------------
@dataclass(frozen=True)
class Library:
    """Every content that rows reference: milvus ids ascending, and how many rows each has."""

    ids: np.ndarray  # int64, sorted
    rows: np.ndarray  # int64, rows per id

    @property
    def images(self) -> int:
        return int(self.rows.sum())

    def index_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, found mask) of milvus ids in this library."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return pos, self.ids[pos] == ids


def read_library(metadata: MetadataStore, page: int = LIBRARY_PAGE) -> Library:
    """The library in keyset pages: 16 bytes per content in memory, never a whole table."""
    ids: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    after = -1
    while True:
        chunk = metadata.content_counts(after, page)
        if not chunk:
            break
        arr = np.asarray(chunk, dtype=np.int64)
        ids.append(arr[:, 0])
        rows.append(arr[:, 1])
        after = int(arr[-1, 0])
        if len(chunk) < page:
            break
    if not ids:
        return Library(np.empty(0, np.int64), np.empty(0, np.int64))
    return Library(np.concatenate(ids), np.concatenate(rows))


@dataclass(frozen=True)
class Links:
    """Pairs of milvus ids (a < b) and their distance."""

    a: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    b: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    d: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))

    def __len__(self) -> int:
        return len(self.a)

    def where(self, keep: np.ndarray) -> Links:
        return Links(self.a[keep], self.b[keep], self.d[keep])

    def within(self, distance: float) -> Links:
        return self.where(self.d <= distance)

    def between(self, ids: np.ndarray) -> Links:
        """Only links whose both ends are among `ids` (sorted)."""
        return self.where(np.isin(self.a, ids) & np.isin(self.b, ids))

    def without(self, ids: np.ndarray) -> Links:
        return self.where(~(np.isin(self.a, ids) | np.isin(self.b, ids)))

    def plus(self, other: Links) -> Links:
        return Links(np.concatenate([self.a, other.a]), np.concatenate([self.b, other.b]),
                     np.concatenate([self.d, other.d]))  # fmt: skip


def search_links(vectors: VectorIndex, ids: Sequence[int], radius: float, neighbors: int) -> Links:
    """Range-search the vectors of `ids` in one call: links to their nearest within radius.

    A content without a vector (a store out of step: reconcile repairs it) has no links.
    """
    return searched_links(vectors, ids, radius, neighbors)[0]


def searched_links(
    vectors: VectorIndex, ids: Sequence[int], radius: float, neighbors: int
) -> tuple[Links, list[int]]:
    """search_links, and the ids it could search (those that have a vector)."""
    found = vectors.get([int(i) for i in ids])
    queries = [int(i) for i in ids if int(i) in found]
    if not queries:
        return Links(), []
    hits = vectors.range_search(np.stack([found[i] for i in queries]), radius, neighbors + 1)
    a: list[int] = []
    b: list[int] = []
    d: list[float] = []
    for q, row in zip(queries, hits, strict=True):
        for h in row:
            if h.id != q:  # itself, at distance 0
                a.append(min(q, h.id))
                b.append(max(q, h.id))
                d.append(max(0.0, h.distance))
    links = Links(np.asarray(a, np.int64), np.asarray(b, np.int64), np.asarray(d, np.float32))
    return links, queries


def components(library: Library, links: Links) -> list[np.ndarray]:
    """The milvus ids of each component holding two images or more (rows sharing a content
    count), found by union-find; links to contents outside the library are ignored."""
    uf = UnionFind(len(library.ids))
    pa, fa = library.index_of(links.a)
    pb, fb = library.index_of(links.b)
    ok = fa & fb
    uf.union_all(pa[ok], pb[ok])
    return grouped(library, uf.labels())


def grouped(library: Library, labels: np.ndarray) -> list[np.ndarray]:
    """Components (by their label per content) that hold two images or more."""
    if not len(labels):
        return []
    images = np.bincount(labels, weights=library.rows, minlength=len(labels))
    keep = np.flatnonzero(images[labels] >= 2)
    if not len(keep):
        return []
    order = keep[np.argsort(labels[keep], kind="stable")]
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return [library.ids[part] for part in np.split(order, cuts)]


# -- groups ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    record: ImageRecord
    distance: float | None  # to the group's best image; None when a vector is missing
    match: str  # BEST, SAME_BYTES, SAME_PIXELS_MATCH or NEAR

    def fields(self) -> dict[str, Any]:
        """What a member adds to an image's own fields, in the API and the job's report."""
        # Six decimals: float32 vectors carry no more, and 0.30000001 reads as noise.
        d = None if self.distance is None else round(self.distance, 6)
        return {"distance": d, "match": self.match, "keep": self.match == BEST}


@dataclass(frozen=True)
class Group:
    members: tuple[Member, ...]  # the best image first, then nearest first

    @property
    def best(self) -> ImageRecord:
        return self.members[0].record

    @property
    def size(self) -> int:
        return len(self.members)

    def fields(self) -> dict[str, Any]:
        distances = [m.distance for m in self.members if m.distance is not None]
        worst = max(distances, default=None)
        return {"size": self.size, "best": self.best.meta_uuid,
                "max_distance": None if worst is None else round(worst, 6)}  # fmt: skip


def sort_key(size: int, best: ImageRecord) -> tuple[int, int]:
    """Groups: largest first, then by their best image's id."""
    return (-size, best.id)


def describe(records: Sequence[ImageRecord], vectors: Mapping[int, np.ndarray]) -> Group:
    """A group from its rows: the best one first, then the others by distance to it."""
    best = min(records, key=best_key)
    anchor = vectors.get(best.milvus_id)
    others = []
    for rec in records:
        if rec is best:
            continue
        if rec.milvus_id == best.milvus_id:
            others.append(Member(rec, 0.0, SAME_BYTES))
            continue
        other = vectors.get(rec.milvus_id)
        d = None if anchor is None or other is None else squared_distance(anchor, other)
        match = SAME_PIXELS_MATCH if d is not None and d <= SAME_PIXELS else NEAR
        others.append(Member(rec, d, match))
    others.sort(key=lambda m: (math.inf if m.distance is None else m.distance,
                               best_key(m.record)))  # fmt: skip
    return Group((Member(best, 0.0, BEST), *others))


def chunks(items: Ids, size: int) -> Iterator[list[int]]:
    seq = np.asarray(items).tolist()
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def records_of(metadata: MetadataStore, ids: Ids) -> dict[int, list[ImageRecord]]:
    out: dict[int, list[ImageRecord]] = {}
    for part in chunks(ids, LOOKUP_CHUNK):
        out.update(metadata.by_milvus_ids(part))
    return out


def vectors_of(vectors: VectorIndex, ids: Ids) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for part in chunks(ids, LOOKUP_CHUNK):
        out.update(vectors.get(part))
    return out


def rows_of(component: np.ndarray, records: Mapping[int, list[ImageRecord]]) -> list[ImageRecord]:
    return [rec for mid in component.tolist() for rec in records.get(int(mid), [])]


# -- the HTTP route's view ------------------------------------------------------------------
@dataclass(frozen=True)
class DuplicateQuery:
    threshold: float
    offset: int
    limit: int
    settings: DuplicateSettings


@dataclass(frozen=True)
class DuplicatePage:
    groups: list[Group]
    total: int  # groups at this threshold
    threshold: float
    images: int  # images in the library


class NeighborGraph:
    """The links within max_threshold of a library small enough to hold online.

    Kept between requests and brought in step with the library at each one: contents added
    since are range-searched, links of contents deleted since are dropped (a deletion never
    creates a link), so moving the threshold or deleting copies costs no search at all.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._searched = np.empty(0, np.int64)  # contents whose links are held, sorted
        self._links = Links()
        self._params: tuple[float, int] | None = None

    def refresh(self, stores: Stores, settings: DuplicateSettings) -> tuple[Library, Links]:
        rows = stores.metadata.count()
        if rows > settings.max_online_images:
            raise LibraryTooLarge(
                f"the library has {rows} images, more than the {settings.max_online_images} "
                "this route groups online (duplicates.max_online_images): run the job "
                "`python -m pipelines.duplicates --report duplicates.json` (or `image-search "
                "duplicates`), docs/duplicates.md"
            )
        with self._lock:
            params = (settings.max_threshold, settings.neighbors)
            if params != self._params:
                self._searched, self._links, self._params = np.empty(0, np.int64), Links(), params
            library = read_library(stores.metadata)
            searched = np.intersect1d(self._searched, library.ids)
            links = self._links.without(np.setdiff1d(self._searched, library.ids))
            # New contents, and any whose vector was missing last time (reconcile may have
            # put it back since).
            for part in chunks(np.setdiff1d(library.ids, searched), settings.search_batch):
                found, done = searched_links(stores.vectors, part, settings.max_threshold,
                                             settings.neighbors)  # fmt: skip
                links = links.plus(found.between(library.ids))
                searched = np.union1d(searched, np.asarray(done, np.int64))
            self._searched, self._links = searched, links
            return library, links

    def page(self, stores: Stores, query: DuplicateQuery) -> DuplicatePage:
        library, links = self.refresh(stores, query.settings)
        parts = components(library, links.within(link_distance(query.threshold)))
        records = records_of(stores.metadata, np.concatenate(parts) if parts else [])
        # Rows deleted since the library was read leave a group smaller, or no group at all.
        found = [(rows, part) for part in parts if len(rows := rows_of(part, records)) >= 2]
        found.sort(key=lambda g: sort_key(len(g[0]), min(g[0], key=best_key)))
        shown = found[query.offset : query.offset + query.limit]
        vecs = vectors_of(stores.vectors, np.concatenate([p for _, p in shown]) if shown else [])
        groups = [describe(rows, vecs) for rows, _ in shown]
        return DuplicatePage(groups, len(found), query.threshold, library.images)
