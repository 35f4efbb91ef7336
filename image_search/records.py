"""What one stored image is: its record, the keys derived from its content, the meta_uuid rule."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from image_search.errors import BadRequest

# Milvus primary keys are signed 64-bit; the original stored them in a 32-bit column.
_INT63 = (1 << 63) - 1
# 1-36 characters: the original's column width; the characters are safe in a URL path segment.
META_UUID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,36}$")
META_UUID_RULE = "1-36 characters of letters, digits, _ . : -"


def valid_meta_uuid(meta_uuid: str) -> bool:
    return bool(META_UUID_RE.match(meta_uuid))


def check_meta_uuid(meta_uuid: str | None) -> str | None:
    """A client's meta_uuid, or None for the default (the md5 of the bytes, known once read)."""
    if not meta_uuid:
        return None
    if not valid_meta_uuid(meta_uuid):
        raise BadRequest(f"meta_uuid must be {META_UUID_RULE}")
    return meta_uuid


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
class ContentInfo:
    """What the bytes alone tell: their hashes, format and size."""

    sha256: str
    md5: str
    ext: str
    mime: str
    size: int


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


def new_image(
    info: ContentInfo,
    meta_uuid: str,
    file_name: str,
    width: int,
    height: int,
    tags: tuple[str, ...] = (),
) -> NewImage:
    """The one way to describe an image to write, online and in the backfill alike."""
    return NewImage(
        meta_uuid=meta_uuid,
        hash_code=info.md5,
        sha256=info.sha256,
        file_name=file_name,
        file_path=object_key_for(info.sha256, info.ext),
        mime=info.mime,
        size_bytes=info.size,
        width=width,
        height=height,
        tags=tags,
    )


@dataclass(frozen=True)
class Upload:
    """An image as it arrives, before decoding: what its bytes say and what the client said."""

    info: ContentInfo
    meta_uuid: str
    file_name: str
    tags: tuple[str, ...] = ()

    def new_image(self, width: int, height: int) -> NewImage:
        return new_image(self.info, self.meta_uuid, self.file_name, width, height, self.tags)
