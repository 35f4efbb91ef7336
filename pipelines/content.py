"""CPU stage for stored content (re-embed, reconcile): object bytes -> decoded pixels, and
region search's views where the target collection has region vectors."""

from __future__ import annotations

from image_search.errors import NotFound, SearchEngineError
from image_search.imaging import decode
from image_search.regions import index_views
from pipelines.batches import Batch, skip_reason, to_batch, to_rows
from pipelines.context import task_context
from pipelines.region_columns import pack_views

CONTENT_COLUMNS = ("sha256", "milvus_id", "file_path", "status", "reason", "pixels", "views")


def fetch_decode_batch(batch: Batch, settings_json: str, regions: bool = False) -> Batch:
    """Ray Data task: rows of (sha256, milvus_id, file_path) -> + status, reason, pixels
    (and, with `regions`, views)."""
    ctx = task_context(settings_json)
    max_pixels = ctx.settings.limits.max_pixels
    rows = to_rows(batch)
    for row in rows:
        row["status"], row["reason"], row["pixels"], row["views"] = "decoded", "", b"", b""
        try:
            data = ctx.objects.get(row["file_path"])
            decoded = decode(data, ctx.spec, max_pixels)
            if regions:
                row["views"] = pack_views(index_views(data, ctx.spec, max_pixels))
        except NotFound:
            row["status"], row["reason"] = "failed", "object missing: the row cannot be re-embedded"
            continue
        except SearchEngineError as exc:
            row["status"], row["reason"] = "failed", skip_reason(exc)
            continue
        row["pixels"] = decoded.pixels.tobytes()
    return to_batch(rows, CONTENT_COLUMNS)
