"""The backfill's CPU stage: read -> hash -> plan against the metadata -> decode what is new.

Planning (image_search.planning) happens here, before the embedder, so a rerun over indexed
files costs one read and one hash per file and never a forward pass. A row leaves with the
planner's status (new, known, duplicate, conflict) or `skipped` when unreadable, not an image,
corrupt or too large (its reason says which); only new rows carry decoded pixels, and, where
the collection has region vectors, region search's views (image_search.regions.index_views).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from image_search.config import Settings
from image_search.errors import SearchEngineError
from image_search.imaging import content_info, decode
from image_search.planning import PlanItem, plan_items
from image_search.regions import index_views
from image_search.stores import MetadataStore
from pipelines.batches import Batch, Row, skip_reason, to_batch, to_rows
from pipelines.context import TaskContext, task_context
from pipelines.region_columns import pack_views
from pipelines.sources import read_bytes

READ_COLUMNS = (
    "uri", "meta_uuid", "explicit_uuid", "file_name", "status", "reason", "sha256", "md5",
    "ext", "mime", "size", "width", "height", "data", "pixels", "thumbnail", "tags", "views",
)  # fmt: skip


def blank_row(uri: str, meta_uuid: str, size: int, tags: str = "[]") -> Row:
    return {
        "tags": tags,
        "uri": uri, "meta_uuid": meta_uuid, "explicit_uuid": bool(meta_uuid),
        "file_name": PurePosixPath(uri).name[:255], "status": "skipped", "reason": "",
        "sha256": "", "md5": "", "ext": "", "mime": "", "size": size, "width": 0, "height": 0,
        "data": b"", "pixels": b"", "thumbnail": b"", "views": b"",
    }  # fmt: skip


def read_batch(batch: Batch, settings_json: str, regions: bool = False) -> Batch:
    """Ray Data task (map_batches): source rows in, planned rows out (same count); with
    `regions`, new rows also carry their views for region search."""
    ctx = task_context(settings_json)
    rows = [_read_and_hash(r, ctx.settings) for r in to_rows(batch)]
    plan(ctx.metadata, rows)
    for row in rows:
        if row["status"] == "new":
            _decode(row, ctx, regions)
        if row["status"] not in ("new", "known"):
            row["data"] = b""  # nothing to write: do not carry the bytes downstream
    return to_batch(rows, READ_COLUMNS)


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
    """Classify rows (status "planned") with the engine's planner: two queries per batch."""
    todo = [r for r in rows if r["status"] == "planned"]
    items = [PlanItem(r["meta_uuid"], r["sha256"], adopt_known=r["explicit_uuid"]) for r in todo]
    for r, p in zip(todo, plan_items(metadata, items), strict=True):
        r["status"], r["reason"] = p.status, p.reason
        if p.status == "known" and p.same_content is not None:
            r["width"], r["height"] = p.same_content.width, p.same_content.height


def _decode(row: Row, ctx: TaskContext, regions: bool) -> None:
    max_pixels = ctx.settings.limits.max_pixels
    try:
        decoded = decode(row["data"], ctx.spec, max_pixels,
                         thumbnail_size=ctx.settings.server.thumbnail_size)  # fmt: skip
        if regions:  # as the service's Decoder: a second decode at the views' own draft size
            row["views"] = pack_views(index_views(row["data"], ctx.spec, max_pixels))
    except SearchEngineError as exc:
        row["status"], row["reason"] = "skipped", skip_reason(exc)
        return
    row["pixels"] = decoded.pixels.tobytes()
    row["thumbnail"] = decoded.thumbnail
    row["width"], row["height"] = decoded.width, decoded.height
