"""The three store protocols (objects, vectors, metadata) every implementation follows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from image_search.errors import StoreUnavailable
from image_search.records import ImageRecord, NewImage

# Content states (the `content` table, see MetadataStore): referenced or being written, or
# being deleted by the holder of the row's token.
LIVE = "live"
PURGING = "purging"
# A half-open range [lo, hi) of vector ids: reconcile and re-embed walk a large library in
# parts (image_search.records.id_parts), so that what they hold grows with a part, not the library.
IdRange = tuple[int, int]
# How often a vector index's owner (the Indexer) calls flush_if_due: a few comparisons, so run
# often enough that a tail which searches are paying for is flushed soon (stores/vectors.py,
# SEARCHED_FLUSH_ROWS).
FLUSH_CHECK_S = 0.1


@dataclass(frozen=True)
class VectorHit:
    id: int
    distance: float


@dataclass(frozen=True)
class RegionHit:
    """A stored part of an image (region search): its image's vector id, part number, box."""

    owner: int
    part: int
    distance: float
    box: tuple[float, float, float, float]


class ObjectStore(Protocol):
    name: str

    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with `prefix`, once each, streamed (in no particular order)."""
        ...

    def presigned_url(self, key: str) -> str | None:
        """A direct URL for the object, or None when bytes must be streamed by our API."""
        ...

    def age_seconds(self, key: str) -> float | None:
        """Seconds since the object was last written; None when it is gone or unknown."""
        ...

    def ping(self) -> None: ...


class VectorIndex(Protocol):
    name: str
    dim: int
    model_id: str

    def upsert(self, ids: Sequence[int], vectors: np.ndarray) -> None: ...
    def search(
        self, vector: np.ndarray, limit: int, ids: Sequence[int] | None = None
    ) -> list[VectorHit]:
        """The nearest `limit` vectors, ascending; with `ids`, among those ids only."""
        ...

    def search_many(self, vectors: np.ndarray, limit: int) -> list[list[VectorHit]]:
        """search() (no `ids`) for each row of `vectors`, in one request; a list per row."""
        ...

    def range_search(self, vectors: np.ndarray, radius: float, limit: int) -> list[list[VectorHit]]:
        """For each row of `vectors`, its nearest `limit` stored vectors within `radius`
        (squared L2, inclusive), ascending; one list per query (duplicate review)."""
        ...

    def get(self, ids: Sequence[int], fresh: bool = True) -> dict[int, np.ndarray]:
        """Stored vectors by id. fresh=False reads at the searches' consistency: it may miss
        a vector another process wrote a moment ago (the caller then asks again, fresh)."""
        ...

    def delete(self, ids: Sequence[int]) -> None: ...
    def count(self) -> int: ...
    def ids(self, within: IdRange | None = None) -> Iterator[int]:
        """Every stored id (in no order), or those in `within`."""
        ...

    def flush(self) -> None: ...
    def flush_if_due(self) -> None:
        """Called every FLUSH_CHECK_S by the store's owner: flush a tail of writes once idle,
        or once searches pay more for it than a flush costs."""
        ...

    def ping(self) -> None: ...
    def drop(self) -> None: ...


class RegionIndex(Protocol):
    """Region search's second collection (stores/vectors.py MilvusRegionIndex): per image,
    keyed by its vector id (`owner`), parts 0.. with their boxes. Writes, deletes and searches
    by owner; its parts' ids are derived, never read back."""

    name: str
    dim: int
    model_id: str

    def upsert_parts(
        self,
        owners: Sequence[int],
        vectors: Sequence[np.ndarray],
        boxes: Sequence[Sequence[tuple[float, float, float, float]]],
    ) -> None: ...
    def search_parts(self, vectors: np.ndarray, limit: int) -> list[list[RegionHit]]: ...
    def delete_owners(self, owners: Sequence[int]) -> None: ...
    def owners_with_parts(self, owners: Sequence[int]) -> set[int]: ...
    def owners(self, within: IdRange | None = None) -> Iterator[int]: ...
    def count(self) -> int: ...
    def flush(self) -> None: ...
    def flush_if_due(self) -> None: ...
    def ping(self) -> None: ...
    def drop(self) -> None: ...


@dataclass(frozen=True)
class ContentKey:
    """One stored content: its vector id and, when known, its bytes' sha256 and object key.

    milvus_id is the key all three stores share: the object and thumbnails are named by the
    sha256 it derives from, and a vector found alone cannot be mapped back to its sha256.
    """

    milvus_id: int
    sha256: str = ""
    file_path: str = ""


@dataclass(frozen=True)
class Purge:
    """The right to delete one content's vector, object and thumbnails.

    Whoever holds it deletes them, then calls end_purge(token); writers of that content wait
    meanwhile (or take over a purge older than the lease: its holder crashed).
    """

    key: ContentKey
    token: str


@dataclass(frozen=True)
class Removal:
    """A deleted row, and the purge its caller must carry out when it was the last reference."""

    record: ImageRecord
    purge: Purge | None


@dataclass(frozen=True)
class Wipe:
    """delete_all: the rows deleted, and every content, claimed for purging under one token."""

    rows: int
    token: str
    contents: list[ContentKey]


@dataclass(frozen=True)
class RefDrift:
    """A content whose bookkeeping disagrees with the rows (reconcile reports and repairs it)."""

    key: ContentKey
    refs: int  # what the content row says (-1: there is no content row)
    rows: int  # the image rows that really reference it
    pins: int
    state: str
    age_s: float


@dataclass(frozen=True)
class TagCount:
    """A tag and how many images carry it (the web page's tag filter)."""

    tag: str
    images: int


class PinLost(StoreUnavailable):
    """A writer's pin was invalidated (delete-all, or a stale pin reclaimed): retry the write."""

    def __init__(self, message: str, store: str = "metadata") -> None:
        super().__init__(message, store)


class MetadataStore(Protocol):
    """Rows, and the `content` table that arbitrates every write and delete of stored content.

    Each content row counts `refs` (committed image rows) and `pins` (writers in flight, in
    any process); its `token` names the current generation. Data is deleted only under a
    Purge, which exists only while refs + pins is 0; see image_search.indexing.
    """

    name: str

    def create_schema(self) -> None: ...
    def add(self, new: NewImage) -> ImageRecord:
        """Insert a row with no data written (tools, tests); the content counts it."""
        ...

    def get(self, meta_uuid: str) -> ImageRecord | None: ...
    def get_many(self, meta_uuids: Sequence[str]) -> dict[str, ImageRecord]:
        """get() for each, in one query: the rows found, by meta_uuid."""
        ...

    def page(
        self, offset: int, limit: int, tags: Sequence[str] = (), before: int | None = None
    ) -> list[ImageRecord]:
        """Rows newest first; with `tags`, only the rows that carry every one of them; with
        `before`, only rows whose id is below it (the next page after a row's id, at the
        same cost however deep)."""
        ...

    def count(self, tags: Sequence[str] = ()) -> int:
        """Rows; with `tags`, the rows that carry every one of them."""
        ...

    def recount(self) -> tuple[int, int]:
        """Set the kept row count from the rows: (the count kept before, or -1; rows)."""
        ...

    def tag_counts(self, limit: int) -> list[TagCount]:
        """The `limit` most used tags with their image counts, most used first, then by tag."""
        ...

    def tagged_contents(self, tags: Sequence[str], limit: int) -> list[int] | None:
        """The milvus_ids of the rows that carry every one of `tags` (at least one), or None
        when there are more than `limit` (a search then filters instead of restricting)."""
        ...

    def delete(self, meta_uuid: str) -> Removal | None:
        """Delete the row and drop its reference, in one transaction."""
        ...

    def references(self, sha256: str) -> int: ...
    def pin(self, keys: Sequence[ContentKey], lease_s: float) -> dict[int, str]:
        """Pin each content for a writer (a key listed n times gets n pins).

        Returns milvus_id -> the pin's token; a content being purged is left out (retry
        shortly), unless its purge is older than lease_s: then it is taken over and pinned.
        """
        ...

    def hold(self, milvus_id: int) -> str | None:
        """Pin a content only while rows reference it (a thumbnail, a re-embed); else None."""
        ...

    def commit(self, new: NewImage, token: str) -> ImageRecord:
        """Turn one pin into the new row's reference and insert the row, atomically.

        Raises Conflict (meta_uuid taken; the pin stays) or PinLost (the pin is gone).
        """
        ...

    def release(self, milvus_id: int, token: str) -> Purge | None:
        """Drop one pin; a Purge when nothing references the content any more.

        Raises PinLost when the pin's generation is gone.
        """
        ...

    def claim(self, key: ContentKey, lease_s: float) -> Purge | None:
        """Claim content that no row or pin references (an orphan); None when it is live or
        another purge (younger than lease_s) has it."""
        ...

    def content_state(self, milvus_id: int) -> str | None:
        """LIVE, PURGING, or None when there is no content row."""
        ...

    def end_purge(self, token: str, milvus_ids: Sequence[int] | None = None) -> int:
        """Forget purged content rows (all of the token's, or only these); how many went."""
        ...

    def abandon_purge(self, token: str, milvus_ids: Sequence[int]) -> int:
        """Give up purges that failed midway (a store down): their rows are made stale at
        once, so the next writer takes them over instead of waiting out the lease."""
        ...

    def ref_drift(self, lease_s: float) -> list[RefDrift]:
        """Contents whose refs disagree with the rows, or whose pins or purge are older than
        lease_s (their writer or purger crashed)."""
        ...

    def repair_refs(self, lease_s: float) -> list[Purge]:
        """Fix what ref_drift finds; the purges of contents that nothing references."""
        ...

    def by_milvus_ids(
        self, ids: Sequence[int], tags: Sequence[str] = ()
    ) -> dict[int, list[ImageRecord]]:
        """Rows by vector id, oldest first; with `tags`, only those that carry all of them."""
        ...

    def existing_uuids(self, meta_uuids: Sequence[str]) -> set[str]: ...
    def content_counts(self, after: int, limit: int) -> list[tuple[int, int]]:
        """(milvus_id, rows) of the contents rows reference, milvus_id ascending from the first
        above `after`: one keyset page (duplicate review reads the library in these)."""
        ...

    def iter_content(self, within: IdRange | None = None) -> Iterator[tuple[str, int, str]]:
        """Every distinct (sha256, milvus_id, file_path), milvus_id ascending, or those whose
        milvus_id is in `within`: for reconcile and re-embed."""
        ...

    def delete_all(self) -> Wipe:
        """Delete every row and claim every content (invalidating every pin) at once."""
        ...

    def ping(self) -> None: ...
