"""Response shaping: the original's envelope and MetaResult fields, plus our additions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from image_search.errors import SearchEngineError
from image_search.imaging import MIME_BY_EXT
from image_search.indexing import Hit
from image_search.records import ImageRecord

# Routes that answer stored bytes: one documented content type per format we store.
IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {mime: {} for mime in sorted(set(MIME_BY_EXT.values()))},
        "description": "The image's bytes",
    }
}


def mime_for(key: str) -> str:
    # One source for ext -> mime: the sniffer's table, HEIC and AVIF included.
    return MIME_BY_EXT.get(key.rsplit(".", 1)[-1], "application/octet-stream")


def meta_results(
    records: Sequence[ImageRecord], base: str, presigned: Mapping[str, str | None]
) -> list[dict[str, Any]]:
    """MetaResult dicts: the original's fields plus width/height/size, tags, thumbnail_url."""
    base = base.rstrip("/")
    out = []
    for r in records:
        rel = f"/files/{r.file_path}"
        out.append(
            {
                "id": r.id,
                "meta_uuid": r.meta_uuid,
                "hash_code": r.hash_code,
                "sha256": r.sha256,
                "milvus_id": r.milvus_id,
                "file_name": r.file_name,
                "file_path": r.file_path,
                "created_at": r.created_at.isoformat(),
                "updated_at": r.updated_at.isoformat(),
                "file_url": presigned.get(r.file_path) or base + rel,
                "file_relative_url": rel,
                "thumbnail_url": f"{base}/meta/image/{r.meta_uuid}/thumbnail",
                "width": r.width,
                "height": r.height,
                "size_bytes": r.size_bytes,
                "mime": r.mime,
                "tags": list(r.tags),
            }
        )
    return out


def search_hits(hits: Sequence[Hit], shown: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hits with `distance` (squared L2 of unit vectors, 0..2) and `score` (0..100); in
    regions mode `matched_region` ({x, y, w, h} of the stored image, 0-1, and the query's
    `cell` "3x3:4" with its `cell_box`) where a region or cell matched best, else null."""
    return [
        {**s, "distance": h.distance, "score": (2.0 - h.distance) / 2.0 * 100.0,
         "matched_region": h.matched_region.fields() if h.matched_region else None}
        for h, s in zip(hits, shown, strict=True)
    ]  # fmt: skip


def batch_outcome(
    name: str, res: ImageRecord | SearchEngineError, shown: Iterator[dict[str, Any]]
) -> dict[str, Any]:
    """One file's line in a batch upload's answer; `shown` yields the indexed ones in order."""
    if isinstance(res, ImageRecord):
        return {"file_name": name, "succeed": True, "status": 200, "message": "indexed",
                "data": next(shown)}  # fmt: skip
    return {"file_name": name, "succeed": False, "status": res.status, "message": res.message}
