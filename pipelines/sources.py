"""Backfill sources: a local folder, an S3 prefix or a manifest (CSV/JSONL) -> items to read.

Listing happens once, in the driver; reading the bytes happens in the Ray Data tasks (`read`),
so each file is read exactly once, by the worker that hashes and decodes it.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image_search.config import Settings
from image_search.errors import BadRequest, ImageTooLarge, SearchEngineError
from image_search.imaging import SUPPORTED_EXTENSIONS
from image_search.records import META_UUID_RULE, check_tags, tags_json, valid_meta_uuid
from image_search.stores.s3 import minio_client

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".jsonl")
_PATH_COLUMNS = ("path", "key", "uri", "file")


class Unreadable(SearchEngineError):
    """The source file could not be read (vanished, permissions, S3 error)."""


@dataclass
class Item:
    """One file to index. meta_uuid "" means the default: the md5 of the bytes."""

    uri: str
    meta_uuid: str = ""
    size: int = -1  # -1: unknown until read
    tags: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"uri": self.uri, "meta_uuid": self.meta_uuid, "size": self.size,
                "tags": tags_json(self.tags)}  # fmt: skip


@dataclass
class Listing:
    items: list[Item] = field(default_factory=list)
    # Files that are not considered at all (extension not an image type).
    ignored: int = 0
    # Entries rejected before reading (bad manifest line, invalid meta_uuid): uri, reason.
    rejected: list[dict[str, str]] = field(default_factory=list)


def has_image_extension(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in SUPPORTED_EXTENSIONS if "." in name else False


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/some/key -> (bucket, some/key)."""
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return bucket, key


def list_source(source: str, settings: Settings) -> Listing:
    if source.startswith("s3://"):
        return _list_s3(source, settings)
    path = Path(source)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return _list_manifest(path)
    if path.is_dir():
        return _list_folder(path)
    raise FileNotFoundError(
        f"source {source!r} is not a folder, an s3://bucket/prefix or a .csv/.jsonl manifest"
    )


def _list_folder(root: Path) -> Listing:
    out = Listing()
    for f in sorted(root.resolve().rglob("*")):
        if not f.is_file():
            continue
        if has_image_extension(f.name):
            out.items.append(Item(uri=str(f)))
        else:
            out.ignored += 1
    return out


def _list_s3(source: str, settings: Settings) -> Listing:
    bucket, prefix = split_s3(source)
    out = Listing()
    for obj in minio_client(settings).list_objects(bucket, prefix=prefix, recursive=True):
        name = obj.object_name or ""
        if name.endswith("/"):
            continue
        if has_image_extension(name):
            out.items.append(Item(uri=f"s3://{bucket}/{name}", size=int(obj.size or 0)))
        else:
            out.ignored += 1
    return out


def _manifest_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, row) pairs; a row that cannot be parsed comes back as its error text."""
    with path.open(encoding="utf-8", newline="") as fh:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(fh)
            for n, row in enumerate(reader, start=2):
                yield n, {k.strip().lower(): v for k, v in row.items() if k}
            return
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, f"not JSON: {exc}"
                continue
            yield n, doc if isinstance(doc, dict) else "not a JSON object"


def _tags(raw: Any) -> list[str]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, list):
        return [str(t) for t in raw]
    return [t.strip() for t in re.split(r"[;|,]", str(raw)) if t.strip()]


def _list_manifest(path: Path) -> Listing:
    """path (local, relative to the manifest, or s3://bucket/key), meta_uuid, tags."""
    out = Listing()
    base = path.resolve().parent
    for n, row in _manifest_rows(path):
        where = f"{path.name}:{n}"
        if isinstance(row, str):
            out.rejected.append({"uri": where, "reason": f"bad manifest line: {row}"})
            continue
        ref = next((str(row[c]).strip() for c in _PATH_COLUMNS if row.get(c)), "")
        if not ref:
            out.rejected.append({"uri": where, "reason": "bad manifest line: no path column"})
            continue
        uri = ref if ref.startswith("s3://") else str((base / ref).resolve())
        meta_uuid = str(row.get("meta_uuid") or "").strip()
        if meta_uuid and not valid_meta_uuid(meta_uuid):
            out.rejected.append({"uri": uri, "reason": f"invalid meta_uuid: {META_UUID_RULE}"})
            continue
        try:
            tags = list(check_tags(_tags(row.get("tags"))))
        except BadRequest as exc:
            out.rejected.append({"uri": uri, "reason": exc.message})
            continue
        out.items.append(Item(uri=uri, meta_uuid=meta_uuid, tags=tags))
    return out


def read_bytes(uri: str, size: int, max_bytes: int, settings: Settings) -> bytes:
    """Read one source file, refusing one over max_bytes before pulling it into memory."""
    if uri.startswith("s3://"):
        return _read_s3(uri, size, max_bytes, settings)
    p = Path(uri)
    try:
        actual = p.stat().st_size
        _check_size(actual, max_bytes)
        return p.read_bytes()
    except OSError as exc:
        raise Unreadable(f"cannot read {uri}: {exc.strerror or exc}") from exc


def _read_s3(uri: str, size: int, max_bytes: int, settings: Settings) -> bytes:
    from minio.error import S3Error

    bucket, key = split_s3(uri)
    client = minio_client(settings)
    try:
        if size < 0:  # manifest entries carry no size: ask before downloading
            size = int(client.stat_object(bucket, key).size or 0)
        _check_size(size, max_bytes)
        resp = client.get_object(bucket, key)
        try:
            return bytes(resp.read())
        finally:
            resp.close()
            resp.release_conn()
    except S3Error as exc:
        raise Unreadable(f"cannot read {uri}: {exc.code}: {exc.message}") from exc


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageTooLarge(f"file is {size} bytes; the limit is {max_bytes}")
