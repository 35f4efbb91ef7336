"""The backfill's CPU stage: read -> hash -> plan against the metadata -> decode what is new.

Planning happens here, before the embedder, so a rerun over indexed files costs one read and
one hash per file and never a forward pass. Statuses a row leaves with:
  new        decoded; needs a vector and a row
  known      content already has a vector; needs only a row (explicit meta_uuid)
  duplicate  this meta_uuid already holds these bytes, or the content is indexed already
  conflict   this meta_uuid already holds *other* bytes: reported, never overwritten
  skipped    unreadable, not an image, corrupt, too large (reason says which)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from deployments.config import Settings, settings_from_json
from deployments.embedding import model_spec
from deployments.errors import SearchEngineError
from deployments.imaging import PreprocessSpec, content_info, decode
from deployments.stores import ImageRecord, MetadataStore, milvus_id_for, open_metadata
from pipelines.batches import Batch, Row, skip_reason, to_batch, to_rows
from pipelines.sources import read_bytes

PREPARED_COLUMNS = (
    "uri", "meta_uuid", "explicit_uuid", "file_name", "status", "reason", "sha256", "md5",
    "ext", "mime", "size", "width", "height", "data", "pixels", "tags",
)  # fmt: skip


@dataclass(frozen=True)
class _Context:
    settings: Settings
    spec: PreprocessSpec
    metadata: MetadataStore


@functools.lru_cache(maxsize=2)
def _context(settings_json: str) -> _Context:
    # Ray reuses worker processes across tasks: one engine per process, not one per batch.
    settings = settings_from_json(settings_json)
    metadata = open_metadata(settings)
    metadata.create_schema()
    return _Context(settings, model_spec(settings.model.name), metadata)


def blank_row(uri: str, meta_uuid: str, size: int, tags: str = "[]") -> Row:
    return {
        "tags": tags,
        "uri": uri, "meta_uuid": meta_uuid, "explicit_uuid": bool(meta_uuid),
        "file_name": PurePosixPath(uri).name[:255], "status": "skipped", "reason": "",
        "sha256": "", "md5": "", "ext": "", "mime": "", "size": size, "width": 0, "height": 0,
        "data": b"", "pixels": b"",
    }  # fmt: skip


def prepare_batch(batch: Batch, settings_json: str) -> Batch:
    """Ray Data task (map_batches): source rows in, prepared rows out (same count)."""
    ctx = _context(settings_json)
    rows = [_read_and_hash(r, ctx.settings) for r in to_rows(batch)]
    plan(ctx.metadata, rows)
    for row in rows:
        if row["status"] == "new":
            _decode(row, ctx)
        if row["status"] not in ("new", "known"):
            row["data"] = b""  # nothing to write: do not carry the bytes downstream
    return to_batch(rows, PREPARED_COLUMNS)


def _read_and_hash(src: Row, settings: Settings) -> Row:
    row = blank_row(str(src["uri"]), str(src["meta_uuid"] or ""), int(src["size"]),
                    str(src.get("tags") or "[]"))  # fmt: skip
    try:
        data = read_bytes(row["uri"], row["size"], settings.limits.max_upload_bytes, settings)
        info = content_info(data)  # sniffs the magic bytes: non-images stop here
    except SearchEngineError as exc:
        row["reason"] = skip_reason(exc)
        return row
    row.update(
        status="planned", sha256=info.sha256, md5=info.md5, ext=info.ext, mime=info.mime,
        size=info.size, data=data,
    )  # fmt: skip
    # The service's default identity: the md5 of the bytes (the original's hash_code).
    row["meta_uuid"] = row["meta_uuid"] or info.md5
    return row


def plan(metadata: MetadataStore, rows: Sequence[Row]) -> None:
    """Classify rows (status "planned") against the rows in the store: two queries per batch."""
    todo = [r for r in rows if r["status"] == "planned"]
    if not todo:
        return
    taken = metadata.existing_uuids(sorted({r["meta_uuid"] for r in todo}))
    by_id = metadata.by_milvus_ids(sorted({milvus_id_for(r["sha256"]) for r in todo}))
    seen: dict[str, str] = {}  # meta_uuid -> sha256 planned earlier in this batch
    for r in todo:
        same = [
            rec for rec in by_id.get(milvus_id_for(r["sha256"]), []) if rec.sha256 == r["sha256"]
        ]
        r["status"], r["reason"] = _classify(r, same, r["meta_uuid"] in taken, seen)
        if r["status"] == "known":
            r["width"], r["height"] = same[0].width, same[0].height
        if r["status"] in ("new", "known"):
            seen[r["meta_uuid"]] = r["sha256"]


def _classify(
    r: Row, same_content: list[ImageRecord], uuid_taken: bool, seen: dict[str, str]
) -> tuple[str, str]:
    uuid, sha = r["meta_uuid"], r["sha256"]
    if any(rec.meta_uuid == uuid for rec in same_content) or seen.get(uuid) == sha:
        return "duplicate", f"meta_uuid {uuid} already holds these bytes"
    if uuid_taken or uuid in seen:
        return "conflict", f"meta_uuid {uuid} already holds other content; not overwritten"
    if same_content and not r["explicit_uuid"]:
        return "duplicate", f"content already indexed as {same_content[0].meta_uuid}"
    if same_content:
        return "known", ""
    return "new", ""


def _decode(row: Row, ctx: _Context) -> None:
    try:
        decoded = decode(row["data"], ctx.spec, ctx.settings.limits.max_pixels)
    except SearchEngineError as exc:
        row["status"], row["reason"] = "skipped", skip_reason(exc)
        return
    row["pixels"] = decoded.pixels.tobytes()
    row["width"], row["height"] = decoded.width, decoded.height
