"""CPU stage for stored content (re-embed, reconcile): object bytes -> decoded pixels."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from deployments.config import Settings, settings_from_json
from deployments.embedding import model_spec
from deployments.errors import NotFound, SearchEngineError
from deployments.imaging import PreprocessSpec, decode
from deployments.stores import ObjectStore, open_objects
from pipelines.batches import Batch, skip_reason, to_batch, to_rows

CONTENT_COLUMNS = ("sha256", "milvus_id", "file_path", "status", "reason", "pixels")


@dataclass(frozen=True)
class _Context:
    settings: Settings
    spec: PreprocessSpec
    objects: ObjectStore


@functools.lru_cache(maxsize=2)
def _context(settings_json: str) -> _Context:
    settings = settings_from_json(settings_json)
    return _Context(settings, model_spec(settings.model.name), open_objects(settings))


def fetch_decode_batch(batch: Batch, settings_json: str) -> Batch:
    """Ray Data task: rows of (sha256, milvus_id, file_path) -> + status, reason, pixels."""
    ctx = _context(settings_json)
    rows = to_rows(batch)
    for row in rows:
        row["status"], row["reason"], row["pixels"] = "decoded", "", b""
        try:
            data = ctx.objects.get(row["file_path"])
            decoded = decode(data, ctx.spec, ctx.settings.limits.max_pixels)
        except NotFound:
            row["status"], row["reason"] = "failed", "object missing: the row cannot be re-embedded"
            continue
        except SearchEngineError as exc:
            row["status"], row["reason"] = "failed", skip_reason(exc)
            continue
        row["pixels"] = decoded.pixels.tobytes()
    return to_batch(rows, CONTENT_COLUMNS)
