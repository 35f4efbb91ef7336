"""Compare the three stores: rows lacking a vector or an object, vectors and objects lacking a row.

The metadata row is the source of truth: anything else that no row references is an
orphan, and a row whose side effects are gone is damaged. Where the collection has region
vectors, an image's parts there (keyed by its vector id, their owner) count like its vector.
A large library is compared a part of the id space at a time (PART_CONTENTS below), against
one streamed listing of the objects.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from image_search.indexing import IMAGE_PREFIX, IndexService, sha_of_key
from image_search.records import id_parts, milvus_id_for
from image_search.stores import MetadataStore, ObjectStore, RegionIndex, Stores
from image_search.stores.base import IdRange

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Content:
    """One distinct stored content, as the metadata knows it."""

    sha256: str
    milvus_id: int
    file_path: str


@dataclass
class Findings:
    rows: int = 0
    contents: int = 0
    vectors: int = 0
    objects: int = 0
    rows_without_vector: list[Content] = field(default_factory=list)
    rows_without_object: list[Content] = field(default_factory=list)
    orphan_vectors: list[int] = field(default_factory=list)
    # Region search: contents that have a vector but no region vectors, and owners of region
    # vectors that have neither a row nor a vector (an orphan vector's go with it).
    rows_without_regions: list[Content] = field(default_factory=list)
    orphan_regions: list[int] = field(default_factory=list)
    region_owners: int = 0
    orphan_objects: list[str] = field(default_factory=list)
    # Keys outside the layout this service writes: reported, never deleted.
    foreign_objects: list[str] = field(default_factory=list)
    # Orphan vector (or region owner) id -> its image objects in the store (referenced or
    # not), to age it by them.
    image_keys_by_id: dict[int, list[str]] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        return not (
            self.rows_without_vector
            or self.rows_without_object
            or self.orphan_vectors
            or self.orphan_objects
            or self.rows_without_regions
            or self.orphan_regions
        )


# About how many contents a scan holds at once. A bigger library is walked in parts of the id
# space (image_search.records.id_parts), rows and vectors read for each part on their own, so
# that memory follows the part and the disagreements found, not the library (a million rows
# make 128 parts; bench.reconcile_scale measures it).
PART_CONTENTS = 50_000
# Object keys judged at once against the rows of their contents (one metadata query).
_LOOKUP = 500


def part_digits(rows: int, part_contents: int = PART_CONTENTS) -> int:
    """How many hex digits of sha256 cut the library into parts of at most about
    `part_contents` rows (0: one part, the whole library)."""
    digits, part_contents = 0, max(1, part_contents)
    while rows > part_contents * len(id_parts(digits)):
        digits += 1
    return digits


def library_parts(rows: int, part_contents: int = PART_CONTENTS) -> list[IdRange]:
    """The id ranges a library of `rows` rows is read in (scan here, re-embed's missing_in)."""
    return id_parts(part_digits(rows, part_contents))


def scan(stores: Stores, part_contents: int = PART_CONTENTS) -> Findings:
    f = Findings(rows=stores.metadata.count())
    stored = _scan_objects(f, stores.objects, stores.metadata)
    regions = IndexService(stores).region_index()
    for within in library_parts(f.rows, part_contents):
        _scan_part(f, stores, regions, within, stored)
    _keys_of_orphans(f, stores.objects)
    return f


def _keys_of_orphans(f: Findings, objs: ObjectStore) -> None:
    """The image objects of orphan vectors and region owners, to age them by: listed after
    the vectors were read, as an ingest writes its object before its vector, so that every
    orphan seen whose ingest is in flight has its object here (reconcile keeps the young)."""
    orphans = {*f.orphan_vectors, *f.orphan_regions}
    if not orphans:
        return
    for key in objs.keys(IMAGE_PREFIX):
        sha = sha_of_key(key)
        if sha and milvus_id_for(sha) in orphans:
            f.image_keys_by_id.setdefault(milvus_id_for(sha), []).append(key)


def key_hash(key: str) -> int:
    """8 bytes standing for an object key: what the scan keeps of each stored image."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def _scan_objects(f: Findings, objs: ObjectStore, md: MetadataStore) -> np.ndarray:
    """One streamed pass over every object. Counts them, reports the foreign ones, and judges
    each key named by a sha by the rows of its content, _LOOKUP keys a query. Returns the
    sorted key_hash of every image object (8 bytes each), for the parts' rows to be checked
    against: the listing is read once, however many parts there are."""
    images = array("q")
    chunk: list[tuple[str, str]] = []
    for key in objs.keys(""):
        f.objects += 1
        sha = sha_of_key(key)
        if sha is None:
            f.foreign_objects.append(key)
            continue
        if key.startswith(IMAGE_PREFIX):
            images.append(key_hash(key))
        chunk.append((key, sha))
        if len(chunk) == _LOOKUP:
            _judge(f, md, chunk)
            chunk = []
    _judge(f, md, chunk)
    return np.sort(np.frombuffer(images, dtype=np.int64))


def _judge(f: Findings, md: MetadataStore, chunk: list[tuple[str, str]]) -> None:
    """An image object is an orphan unless a row names it; a thumbnail, a cache of a row's
    image, only once no row has its content."""
    rows = md.by_milvus_ids(sorted({milvus_id_for(sha) for _, sha in chunk}))
    for key, sha in chunk:
        recs = rows.get(milvus_id_for(sha), [])
        if key.startswith(IMAGE_PREFIX):
            orphan = all(r.file_path != key for r in recs)
        else:
            orphan = all(r.sha256 != sha for r in recs)
        if orphan:
            f.orphan_objects.append(key)


def _scan_part(
    f: Findings, stores: Stores, regions: RegionIndex | None, within: IdRange, stored: np.ndarray
) -> None:
    md, vecs = stores.metadata, stores.vectors
    contents = [Content(s, int(m), p) for s, m, p in md.iter_content(within)]
    vector_ids = set(vecs.ids(within))
    f.contents += len(contents)
    f.vectors += len(vector_ids)
    row_ids = {c.milvus_id for c in contents}
    f.rows_without_vector += [c for c in contents if c.milvus_id not in vector_ids]
    f.orphan_vectors += sorted(vector_ids - row_ids)
    if regions is not None:
        owners = set(regions.owners(within))
        f.region_owners += len(owners)
        f.rows_without_regions += [
            c for c in contents if c.milvus_id in vector_ids and c.milvus_id not in owners
        ]
        f.orphan_regions += sorted(owners - row_ids - vector_ids)
    # A row whose object the listing did not show is checked by name: its path may lie
    # outside meta/image/ (an older writer's), and that is not a loss.
    listed = _among(stored, np.array([key_hash(c.file_path) for c in contents], dtype=np.int64))
    missing = [c for c, seen in zip(contents, listed, strict=True) if not seen]
    f.rows_without_object += [c for c in missing if not stores.objects.exists(c.file_path)]


def _among(stored: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Which of `hashes` the sorted `stored` holds (a binary search each)."""
    if not len(stored):
        return np.zeros(len(hashes), dtype=bool)
    at = np.searchsorted(stored, hashes).clip(max=len(stored) - 1)
    found: np.ndarray = stored[at] == hashes
    return found


def object_ages(objects: ObjectStore, keys: Iterable[str]) -> dict[str, float]:
    """Seconds since each object was last written; keys whose age is unknown are left out."""
    ages = {key: objects.age_seconds(key) for key in keys}
    return {key: age for key, age in ages.items() if age is not None}


def unreferenced_ids(metadata: MetadataStore, ids: list[int]) -> list[int]:
    """Re-check right before deleting: an ingest may have committed its row since the scan."""
    have = metadata.by_milvus_ids(ids)
    return [i for i in ids if i not in have]
