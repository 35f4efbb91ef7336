"""The Ray-free write/read core over the three stores, with its consistency protocol.

Ingest: put object -> upsert vector -> commit the metadata row (visible only now).
Delete: delete the row -> delete vector, object and thumbnails once no row shares the content.
A crash between steps leaves only unreferenced objects/vectors, which search ignores and
`pipelines.reconcile` removes.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from image_search.config import Settings
from image_search.embedding import Embedding
from image_search.errors import (
    Conflict,
    ModelMismatch,
    NotFound,
    SearchEngineError,
    StoreUnavailable,
)
from image_search.imaging import thumbnail_jpeg
from image_search.planning import Plan, PlanItem, plan_items
from image_search.records import ImageRecord, NewImage, thumbnail_key_for
from image_search.stores import Stores, open_stores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    record: ImageRecord
    distance: float


@dataclass
class IngestItem:
    new: NewImage
    data: bytes
    vector: np.ndarray | None  # None when the content already has a vector


class IndexService:
    """What the Indexer deployment and the backfill writers call."""

    def __init__(
        self, stores: Stores, max_pixels: int = 40_000_000, thumbnail_size: int = 256
    ) -> None:
        self.stores = stores
        self.max_pixels = max_pixels
        self.thumbnail_size = thumbnail_size
        # Serialises ingest/delete of the same content within this process, so a delete that
        # drops the last reference cannot interleave with an ingest of the same bytes.
        self._content_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> IndexService:
        """The stores named in settings, bound to the configured model's collection."""
        return cls(
            open_stores(settings), settings.limits.max_pixels, settings.server.thumbnail_size
        )

    def _content_lock(self, sha256: str) -> threading.Lock:
        with self._locks_guard:
            return self._content_locks[sha256]

    def ensure_stores(self) -> None:
        """Create the schema and the collection (explicitly, never at import).

        Raises ConfigError when the collection was built by another model.
        """
        self.stores.metadata.create_schema()
        self.stores.vectors.ping()

    def readiness(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for store in (self.stores.metadata, self.stores.objects, self.stores.vectors):
            try:
                store.ping()
                out[store.name] = "ok"
            except SearchEngineError as exc:
                out[store.name] = exc.message
        return out

    # -- writes ---------------------------------------------------------------------------
    def plan(self, items: Sequence[PlanItem]) -> list[Plan]:
        return plan_items(self.stores.metadata, items)

    def accept(self, embedding: Embedding) -> np.ndarray:
        """The vector of an embedding, refused when another model made it (mid model switch)."""
        expected = self.stores.vectors.model_id
        if embedding.model_id != expected:
            raise ModelMismatch(
                f"the embedder runs {embedding.model_id} but the index holds {expected}; "
                "a model switch is in progress, retry shortly"
            )
        return embedding.vector

    def ingest(self, item: IngestItem) -> ImageRecord:
        result = self.ingest_many([item])[0]
        if isinstance(result, SearchEngineError):
            raise result
        return result

    def ingest_many(self, items: Sequence[IngestItem]) -> list[ImageRecord | SearchEngineError]:
        """Write a batch; each item succeeds or fails on its own (its error is returned)."""
        st = self.stores
        out: list[ImageRecord | SearchEngineError] = []
        # Side effects first, batched: objects, then one vector upsert for the whole batch.
        for item in items:
            if not st.objects.exists(item.new.file_path):
                st.objects.put(item.new.file_path, item.data, item.new.mime)
        with_vec = [it for it in items if it.vector is not None]
        if with_vec:
            ids = [it.new.milvus_id for it in with_vec]
            vectors = np.stack([it.vector for it in with_vec if it.vector is not None])
            st.vectors.upsert(ids, vectors)
        missing = self._missing_vectors([it for it in items if it.vector is None])
        for item in items:
            if item.new.milvus_id in missing:
                out.append(
                    StoreUnavailable("content is known but its vector is missing", "vectors")
                )
                continue
            with self._content_lock(item.new.sha256):
                try:
                    out.append(st.metadata.add(item.new))  # the commit that makes it visible
                except Conflict as exc:
                    out.append(exc)
        return out

    def _missing_vectors(self, items: Sequence[IngestItem]) -> set[int]:
        """Known content must really have its vector before a new row may point at it."""
        ids = [it.new.milvus_id for it in items]
        found = self.stores.vectors.get(ids) if ids else {}
        return set(ids) - set(found)

    def delete(self, meta_uuid: str) -> ImageRecord:
        rec = self.stores.metadata.delete(meta_uuid)
        if rec is None:
            raise NotFound(f"image {meta_uuid!r} not found")
        with self._content_lock(rec.sha256):
            if self.stores.metadata.references(rec.sha256) == 0:
                self._purge_content(rec.sha256, rec.milvus_id, rec.file_path)
        return rec

    def _purge_content(self, sha256: str, milvus_id: int, file_path: str) -> None:
        self.stores.vectors.delete([milvus_id])
        self.stores.objects.delete(file_path)
        self.stores.objects.delete(thumbnail_key_for(sha256, self.thumbnail_size))

    def delete_all(self) -> int:
        """Admin wipe: rows first (nothing stays visible), then every vector and object."""
        st = self.stores
        contents = list(st.metadata.iter_content())
        n = st.metadata.delete_all()
        st.vectors.drop()
        st.vectors.ping()  # recreates the empty collection with the current model
        for key in list(st.objects.keys()):
            st.objects.delete(key)
        logger.warning("deleted all %d images (%d distinct contents)", n, len(contents))
        return n

    # -- reads ----------------------------------------------------------------------------
    def get(self, meta_uuid: str) -> ImageRecord:
        rec = self.stores.metadata.get(meta_uuid)
        if rec is None:
            raise NotFound(f"image {meta_uuid!r} not found")
        return rec

    def page(self, offset: int, limit: int) -> tuple[list[ImageRecord], int]:
        md = self.stores.metadata
        return md.page(offset, limit), md.count()

    def counts(self) -> tuple[int, int]:
        return self.stores.metadata.count(), self.stores.vectors.count()

    def stored_embedding(self, meta_uuid: str) -> Embedding:
        """The vector an image is indexed by, for a search with a stored image."""
        rec = self.get(meta_uuid)
        found = self.stores.vectors.get([rec.milvus_id])
        if rec.milvus_id not in found:
            raise StoreUnavailable(f"vector of {meta_uuid!r} is missing; run reconcile", "vectors")
        return Embedding(self.stores.vectors.model_id, found[rec.milvus_id])

    def search(
        self, vector: np.ndarray, offset: int, limit: int, threshold: float | None = None
    ) -> list[Hit]:
        """Nearest images, ascending squared-L2 distance; rows fetched in one query."""
        want = offset + limit
        # Ask for a little more than needed: hits without a row (mid-ingest or orphaned) are
        # dropped, and one vector can stand for several rows with the same bytes.
        hits = self.stores.vectors.search(vector, min(16384, want + 16))
        if threshold is not None:
            hits = [h for h in hits if h.distance <= threshold]
        rows = self.stores.metadata.by_milvus_ids([h.id for h in hits])
        out: list[Hit] = []
        for h in hits:
            for rec in rows.get(h.id, []):
                out.append(Hit(rec, max(0.0, h.distance)))
        return out[offset:want]

    def object_bytes(self, key: str) -> bytes:
        return self.stores.objects.get(key)

    def thumbnail(self, meta_uuid: str) -> bytes:
        """A small JPEG, generated on first request and cached in the object store."""
        rec = self.get(meta_uuid)
        size = self.thumbnail_size
        key = thumbnail_key_for(rec.sha256, size)
        try:
            return self.stores.objects.get(key)
        except NotFound:
            pass
        thumb = thumbnail_jpeg(self.stores.objects.get(rec.file_path), size, self.max_pixels)
        self.stores.objects.put(key, thumb, "image/jpeg")
        return thumb
