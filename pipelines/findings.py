"""Compare the three stores: rows lacking a vector or an object, vectors and objects lacking a row.

The metadata row is the source of truth: anything else that no row references is an
orphan, and a row whose side effects are gone is damaged. Where the collection has region
vectors, an image's parts there (keyed by its vector id, their owner) count like its vector.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from image_search.indexing import IMAGE_PREFIX, THUMB_PREFIX, IndexService, sha_of_key
from image_search.records import milvus_id_for
from image_search.stores import MetadataStore, ObjectStore, Stores

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
    # milvus_id -> image object keys in the store (referenced or not), to age orphan vectors.
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


def scan(stores: Stores) -> Findings:
    md, objs, vecs = stores.metadata, stores.objects, stores.vectors
    contents = [Content(s, int(m), p) for s, m, p in md.iter_content()]
    vector_ids = set(vecs.ids())
    keys = list(objs.keys())
    key_set = set(keys)
    f = Findings(
        rows=md.count(), contents=len(contents), vectors=len(vector_ids), objects=len(keys)
    )
    row_ids = {c.milvus_id for c in contents}
    row_shas = {c.sha256 for c in contents}
    row_paths = {c.file_path for c in contents}
    f.rows_without_vector = [c for c in contents if c.milvus_id not in vector_ids]
    f.rows_without_object = [c for c in contents if c.file_path not in key_set]
    f.orphan_vectors = sorted(vector_ids - row_ids)
    regions = IndexService(stores).region_index()
    if regions is not None:
        owners = set(regions.owners())
        f.region_owners = len(owners)
        f.rows_without_regions = [
            c for c in contents if c.milvus_id in vector_ids and c.milvus_id not in owners
        ]
        f.orphan_regions = sorted(owners - row_ids - vector_ids)
    for key in keys:
        sha = sha_of_key(key)
        if key.startswith(IMAGE_PREFIX) and sha:
            f.image_keys_by_id.setdefault(milvus_id_for(sha), []).append(key)
            if key not in row_paths:
                f.orphan_objects.append(key)
        elif key.startswith(THUMB_PREFIX) and sha:
            # A thumbnail is a cache of a row's image: an orphan only once no row has the content.
            if sha not in row_shas:
                f.orphan_objects.append(key)
        else:
            f.foreign_objects.append(key)
    return f


def object_ages(objects: ObjectStore, keys: Iterable[str]) -> dict[str, float]:
    """Seconds since each object was last written; keys whose age is unknown are left out."""
    ages = {key: objects.age_seconds(key) for key in keys}
    return {key: age for key, age in ages.items() if age is not None}


def unreferenced_ids(metadata: MetadataStore, ids: list[int]) -> list[int]:
    """Re-check right before deleting: an ingest may have committed its row since the scan."""
    have = metadata.by_milvus_ids(ids)
    return [i for i in ids if i not in have]
