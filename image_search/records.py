"""What one stored image is: its record, the keys derived from its content, the meta_uuid rule."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from image_search.errors import BadRequest

# Milvus primary keys are signed 64-bit; the original stored them in a 32-bit column.
_INT63 = (1 << 63) - 1
# 1-36 characters: the original's column width; the characters are safe in a URL path segment.
# The first one is a letter or digit, so "." and ".." (which clients normalise away) are out.
META_UUID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,35}$")
# The collection routes' own segments under /meta/image/: an image with one of these ids would
# be shadowed by them (DELETE /meta/image/images deletes everything). A route test keeps this
# set equal to the app's literal /meta/image/<word> routes.
RESERVED_META_UUIDS = frozenset({"images", "count"})
META_UUID_RULE = (
    "1-36 characters of letters, digits, _ . : -, starting with a letter or digit, "
    f"and not one of the reserved words {', '.join(sorted(RESERVED_META_UUIDS))}"
)
# Tags are stored as one JSON list in a 2048-character column; the JSON is ASCII (non-ASCII
# is escaped), so its length is what the column holds, on SQLite and MySQL alike.
TAGS_MAX_JSON = 2048
TAGS_MAX_COUNT = 64
# One tag is also a key of the `image_tag` index (what tag filters search): 512 characters
# keep (image, tag) within MySQL's 3072-byte index key in utf8mb4 (4 bytes a character).
TAG_MAX_CHARS = 512
# Object keys are derived from hashes (object_key_for, thumbnail_key_for): anything else that
# reaches the file route is not ours, and may hold bytes a file system refuses (NUL).
OBJECT_KEY_RE = re.compile(r"^meta/image/[0-9a-f]{64}\.[a-z0-9]{1,5}$")


def valid_meta_uuid(meta_uuid: str) -> bool:
    return bool(META_UUID_RE.match(meta_uuid)) and meta_uuid not in RESERVED_META_UUIDS


def check_meta_uuid(meta_uuid: str | None) -> str | None:
    """A client's meta_uuid, or None for the default (the md5 of the bytes, known once read)."""
    if not meta_uuid:
        return None
    if not valid_meta_uuid(meta_uuid):
        raise BadRequest(f"meta_uuid must be {META_UUID_RULE}")
    return meta_uuid


def tags_json(tags: Sequence[str]) -> str:
    """The stored form of tags (one place, so the limit below measures what is written)."""
    return json.dumps(list(tags))


def normal_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """Tags as stored: stripped, no empty ones, each once, in the order given.

    Stripped because MariaDB compares strings ignoring trailing spaces (PAD SPACE), so "a "
    and "a" would be one key of the tag index there and two on SQLite.
    """
    return tuple(dict.fromkeys(t.strip() for t in tags if t.strip()))


def _check_tag(tag: str) -> None:
    if len(tag) > TAG_MAX_CHARS:
        raise BadRequest(f"a tag is at most {TAG_MAX_CHARS} characters ({tag[:20]!r}...)")
    if any(unicodedata.category(c) == "Cc" for c in tag):
        raise BadRequest(f"a tag may not contain control characters ({tag[:20]!r})")


def check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """Tags that fit their column and the tag index, normalised; a 400 before any write."""
    tags = normal_tags(tags)
    if len(tags) > TAGS_MAX_COUNT:
        raise BadRequest(f"{len(tags)} tags; at most {TAGS_MAX_COUNT}")
    if len(tags_json(tags)) > TAGS_MAX_JSON:
        raise BadRequest(f"tags are too long: at most {TAGS_MAX_JSON} characters as JSON")
    for tag in tags:
        _check_tag(tag)
    return tags


def parse_tags(raw: str | Sequence[str] | None) -> tuple[str, ...]:
    """Comma-separated labels, checked: the upload form's `tags`, and a tag filter's values
    (a filter may repeat its parameter, each value comma-separated too)."""
    values = [raw] if isinstance(raw, str) else list(raw or ())
    return check_tags([t for v in values for t in v.split(",")])


def valid_object_key(key: str) -> bool:
    return bool(OBJECT_KEY_RE.match(key))


def milvus_id_for(sha256_hex: str) -> int:
    """A content-derived vector id: the same bytes always map to the same vector row.

    This is what makes vector writes idempotent (upsert of the same id) and lets concurrent
    uploads of identical bytes converge instead of inserting duplicates.
    """
    return int(sha256_hex[:16], 16) & _INT63


def id_parts(digits: int) -> list[tuple[int, int]]:
    """The vector id space, [0, 2**63): milvus_id_for's ids are never negative, cut along
    `digits` hex digits of sha256 into 8 * 16**(digits - 1) ranges [lo, hi) of equal width, or
    one for 0. milvus_id_for keeps the top 63 of sha256's first 64 bits, so each range holds
    the contents of two prefixes, the one with the top bit set and the one without."""
    n = 16**digits // 2 if digits > 0 else 1
    width = (_INT63 + 1) // n
    return [(i * width, (i + 1) * width) for i in range(n)]


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
