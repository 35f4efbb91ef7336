"""The stateful Ray Data stages: embed (model once per actor) and write (store clients once).

They are callable classes for `map_batches(..., compute=ActorPoolStrategy(...))`; Ray builds
one instance per actor and calls it per batch. Each is a thin shell over the engine: the
embedding model (and, where the collection has region vectors, the service's RegionEmbedder),
and IndexService.ingest_many with the online path's consistency protocol.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from image_search.config import settings_from_json
from image_search.embedding import load_embedder
from image_search.embedding.feature_maps import RegionEmbedder, load_feature_maps
from image_search.errors import Conflict, SearchEngineError, StoreUnavailable
from image_search.indexing import IndexService, IngestItem
from image_search.records import ContentInfo, ImageRecord, NewImage, new_image
from image_search.stores import open_regions, open_vectors
from pipelines.batches import Batch, Row, to_batch, to_rows
from pipelines.region_columns import pack_vectors, unpack_vectors, unpack_views

logger = logging.getLogger(__name__)
T = TypeVar("T")

WRITTEN_COLUMNS = ("uri", "meta_uuid", "sha256", "status", "reason")
UPSERTED_COLUMNS = ("sha256", "milvus_id", "file_path", "status", "reason")
STORE_RETRY_S = (2.0, 5.0, 10.0, 20.0)  # pauses between attempts: ~40 s in all


class EmbedStage:
    """pixels (bytes of crop x crop x 3 uint8, b"" = nothing to embed) -> vector (float32 bytes);
    with `regions`, views (region_columns) -> regions (the image's region vectors)."""

    def __init__(self, settings_json: str, batch_size: int, regions: bool = False) -> None:
        settings = settings_from_json(settings_json)
        self.model = load_embedder(settings.model)
        self.batch_size = batch_size
        crop = self.model.spec.crop
        self.shape = (crop, crop, 3)
        self.regions = (
            RegionEmbedder(self.model, load_feature_maps(self.model, settings.model.name,
                                                         settings.model.threads), batch_size)
            if regions else None
        )  # fmt: skip
        # The first forward pass allocates and picks kernels; pay it before the first batch.
        self.model.embed(np.zeros((1, *self.shape), dtype=np.uint8))
        logger.info("embedder %s ready (batch %d; %s)", self.model.model_id, batch_size,
                    self.model.choice.reason)  # fmt: skip

    def __call__(self, batch: Batch) -> Batch:
        pixels = batch.pop("pixels")
        todo = [i for i, p in enumerate(pixels) if len(p)]
        vectors = np.empty(len(pixels), dtype=object)
        vectors[:] = [b""] * len(pixels)
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start : start + self.batch_size]
            stack = np.stack([np.frombuffer(pixels[i], np.uint8).reshape(self.shape) for i in idx])
            for i, v in zip(idx, self.model.embed(stack), strict=True):
                vectors[i] = v.astype(np.float32).tobytes()
        batch["vector"] = vectors
        views = batch.pop("views", None)
        if self.regions is not None and views is not None:
            batch["regions"] = self._regions(views)
        return batch

    def _regions(self, views: np.ndarray) -> np.ndarray:
        assert self.regions is not None
        out = np.empty(len(views), dtype=object)
        out[:] = [b""] * len(views)
        todo = [i for i, v in enumerate(views) if len(v)]
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start : start + self.batch_size]
            unpacked = [unpack_views(views[i]) for i in idx]
            made = self.regions.embed([v for v in unpacked if v is not None])
            for i, parts in zip(idx, made, strict=True):
                out[i] = pack_vectors(parts)
        return out


def vector_from_bytes(raw: bytes) -> np.ndarray | None:
    return np.frombuffer(raw, dtype=np.float32) if raw else None


def with_retries(what: str, fn: Callable[..., T], *args: Any) -> T:
    """Call fn, riding out a store that is briefly unavailable.

    A batch job can wait where the online path answers 503: Milvus Lite, for one, answers
    nothing while it builds an index after a flush, which takes seconds on a busy node.
    """
    for pause in STORE_RETRY_S:
        try:
            return fn(*args)
        except StoreUnavailable as exc:
            logger.warning("%s failed (%s); retrying in %.0fs", what, exc.message, pause)
            time.sleep(pause)
    return fn(*args)


class WriteStage:
    """Batched writes through IndexService.ingest_many: object -> vector -> metadata row."""

    def __init__(self, settings_json: str) -> None:
        self.svc = IndexService.from_settings(settings_from_json(settings_json))
        self.svc.ensure_stores()  # ConfigError on a model/collection mismatch

    def __call__(self, batch: Batch) -> Batch:
        rows = to_rows(batch)
        todo = [r for r in rows if r["status"] in ("new", "known")]
        if todo:
            self._write(todo)  # sets each of these rows' final status
        return to_batch(rows, WRITTEN_COLUMNS)

    def _write(self, rows: list[Row]) -> None:
        items = [IngestItem(_new_image(r), r["data"], vector_from_bytes(r["vector"]),
                            bytes(r.get("thumbnail") or b""),
                            unpack_vectors(bytes(r.get("regions") or b"")))
                 for r in rows]  # fmt: skip
        try:
            results = with_retries("ingest", self.svc.ingest_many, items)
        except StoreUnavailable as exc:
            # The job goes on; these rows are reported as failed and a rerun picks them up.
            for r in rows:
                r["status"], r["reason"] = "failed", f"store unavailable: {exc.message}"
            return
        for r, res in zip(rows, results, strict=True):
            r["status"], r["reason"] = self._outcome(r, res)

    def _outcome(self, r: Row, res: ImageRecord | SearchEngineError) -> tuple[str, str]:
        if isinstance(res, ImageRecord):
            return "indexed", ""
        if isinstance(res, Conflict):
            # Someone (another batch, the live service) took this meta_uuid after planning.
            rec = self.svc.stores.metadata.get(r["meta_uuid"])
            if rec is not None and rec.sha256 == r["sha256"]:
                return "duplicate", f"meta_uuid {r['meta_uuid']} already holds these bytes"
            return "conflict", f"meta_uuid {r['meta_uuid']} already holds other content"
        return "failed", f"{type(res).__name__}: {res.message}"


def _new_image(r: Row) -> NewImage:
    info = ContentInfo(r["sha256"], r["md5"], r["ext"], r["mime"], int(r["size"]))
    tags = tuple(json.loads(str(r.get("tags") or "[]")))
    return new_image(info, r["meta_uuid"], r["file_name"], int(r["width"]), int(r["height"]), tags)


class UpsertStage:
    """Re-embed and reconcile: write vectors of stored content into one collection (and, with
    `regions`, their region vectors into its region collection, first: a content's vector
    then always means its regions are there, as after an ingest)."""

    def __init__(self, settings_json: str, collection: str, regions: bool = False) -> None:
        settings = settings_from_json(settings_json)
        self.vectors = open_vectors(settings, collection)
        self.vectors.ping()  # creates the collection, bound to this model id
        self.regions = open_regions(settings, collection) if regions else None
        if self.regions is not None:
            self.regions.ping()

    def __call__(self, batch: Batch) -> Batch:
        rows = to_rows(batch)
        todo = [r for r in rows if r["vector"]]
        if todo:
            ids = [int(r["milvus_id"]) for r in todo]
            vecs = np.stack([np.frombuffer(r["vector"], dtype=np.float32) for r in todo])
            try:
                if self.regions is not None:
                    parts = [unpack_vectors(bytes(r.get("regions") or b"")) for r in todo]
                    if any(p is None for p in parts):
                        raise ValueError("a row without region vectors for a region collection")
                    with_retries("upsert regions", self.regions.upsert_parts, ids,
                                 [p.vectors for p in parts if p is not None],
                                 [p.boxes for p in parts if p is not None])  # fmt: skip
                with_retries("upsert", self.vectors.upsert, ids, vecs)
                done, reason = "embedded", ""
            except StoreUnavailable as exc:
                done, reason = "failed", f"store unavailable: {exc.message}"
            for r in todo:
                r["status"], r["reason"] = done, reason
        return to_batch(rows, UPSERTED_COLUMNS)
