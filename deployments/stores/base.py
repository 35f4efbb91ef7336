"""The three store protocols (objects, vectors, metadata) and the record type they share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

# Milvus primary keys are signed 64-bit; the original stored them in a 32-bit column.
_INT63 = (1 << 63) - 1


def milvus_id_for(sha256_hex: str) -> int:
    """A content-derived vector id: the same bytes always map to the same vector row.

    This is what makes vector writes idempotent (upsert of the same id) and lets concurrent
    uploads of identical bytes converge instead of inserting duplicates.
    """
    return int(sha256_hex[:16], 16) & _INT63


def object_key_for(sha256_hex: str, ext: str) -> str:
    # Keyed by sha256 rather than the original's md5: md5 collisions can be crafted, and two
    # different images must never share (and overwrite) one object.
    return f"meta/image/{sha256_hex}.{ext}"


def thumbnail_key_for(sha256_hex: str, size: int) -> str:
    return f"thumb/{size}/{sha256_hex}.jpg"


@dataclass(frozen=True)
class ImageRecord:
    """One visible image: a metadata row. Plain data, safe to pickle across Ray."""

    id: int
    meta_uuid: str
    hash_code: str
    sha256: str
    milvus_id: int
    file_name: str
    file_path: str
    mime: str
    size_bytes: int
    width: int
    height: int
    created_at: datetime
    updated_at: datetime
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class NewImage:
    """What the Indexer needs to write one image."""

    meta_uuid: str
    hash_code: str
    sha256: str
    file_name: str
    file_path: str
    mime: str
    size_bytes: int
    width: int
    height: int
    tags: tuple[str, ...] = ()

    @property
    def milvus_id(self) -> int:
        return milvus_id_for(self.sha256)


@dataclass(frozen=True)
class VectorHit:
    id: int
    distance: float


class ObjectStore(Protocol):
    name: str

    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def keys(self, prefix: str = "") -> Iterator[str]: ...
    def presigned_url(self, key: str) -> str | None:
        """A direct URL for the object, or None when bytes must be streamed by our API."""
        ...

    def ping(self) -> None: ...


class VectorIndex(Protocol):
    name: str
    dim: int
    model_id: str

    def upsert(self, ids: Sequence[int], vectors: np.ndarray) -> None: ...
    def search(self, vector: np.ndarray, limit: int) -> list[VectorHit]: ...
    def get(self, ids: Sequence[int]) -> dict[int, np.ndarray]: ...
    def delete(self, ids: Sequence[int]) -> None: ...
    def count(self) -> int: ...
    def ids(self) -> Iterator[int]: ...
    def flush(self) -> None: ...
    def ping(self) -> None: ...
    def drop(self) -> None: ...


class MetadataStore(Protocol):
    name: str

    def create_schema(self) -> None: ...
    def add(self, new: NewImage) -> ImageRecord: ...
    def get(self, meta_uuid: str) -> ImageRecord | None: ...
    def page(self, offset: int, limit: int) -> list[ImageRecord]: ...
    def count(self) -> int: ...
    def delete(self, meta_uuid: str) -> ImageRecord | None: ...
    def references(self, sha256: str) -> int: ...
    def by_milvus_ids(self, ids: Sequence[int]) -> dict[int, list[ImageRecord]]: ...
    def existing_content(self, sha256s: Sequence[str]) -> set[str]: ...
    def existing_uuids(self, meta_uuids: Sequence[str]) -> set[str]: ...
    def iter_content(self) -> Iterator[tuple[str, int, str]]:
        """Every distinct (sha256, milvus_id, file_path), for reconcile and re-embed."""
        ...

    def delete_all(self) -> int: ...
    def ping(self) -> None: ...
