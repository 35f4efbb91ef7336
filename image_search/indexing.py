"""The Ray-free write/read core over the three stores, with its consistency protocol.

Rows sharing one content (the same bytes under several meta_uuids) share its object, vector
and thumbnails, and many writers touch them at once: Indexer replicas, backfill jobs,
reconcile, each a separate process. The metadata store arbitrates, in its `content` table
(one row per content: refs = committed rows, pins = writers in flight, state live|purging,
a token per generation; see MetadataStore), so that no row is ever visible without its bytes
and vector, and no bytes or vector outlive their last row:
  ingest     pin (refs/pins +1 in one transaction; a content being purged is waited for) ->
             put object -> upsert vector -> commit: the row insert and pin -> ref in one
             transaction that checks the pin's token. A Conflict releases the pin; a pin
             invalidated meanwhile (delete-all, a stale pin reclaimed) fails the item with a
             retryable 503 and purges what it wrote if nothing else has claimed the content.
  delete     the row delete and ref -1 in one transaction, which marks the content purging
             under a new token when nothing is left; the holder of that token then deletes
             vector, object and thumbnail and forgets the content row. A writer arriving
             meanwhile waits for the purge (or takes over one older than LEASE_S: its
             purger crashed) and writes the content anew.
  delete-all one transaction deletes every row and claims every content (which invalidates
             every pin in flight); then their data goes, then whatever no content row claims.
  thumbnail  generated under a hold (a pin on content that has rows), so a delete racing it
             purges the thumbnail too.
  orphans    (a crash between steps) are deleted only under a claim, which fails while any
             row or pin references the content: reconcile can never delete data in use.
The one assumption: a purge step takes far less than LEASE_S (stores answer or time
out in seconds), and the hosts' clocks agree to well within it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from image_search.config import Settings
from image_search.duplicates import DuplicatePage, DuplicateQuery, NeighborGraph
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
from image_search.records import ImageRecord, NewImage, milvus_id_for, thumbnail_key_for
from image_search.regions import (
    Candidate,
    MatchedRegion,
    QueryHits,
    RegionVectors,
    fetch_sizes,
    first_part_fetch,
    merge,
    parts_suffice,
)
from image_search.stores import RegionIndex, Stores, open_stores, records_regions
from image_search.stores.base import PURGING, ContentKey, PinLost, Purge, TagCount, VectorHit
from image_search.stores.vectors import MAX_TOP_K

logger = logging.getLogger(__name__)

# A pin or purge older than this is presumed crashed: a purge may then be taken over, and
# reconcile drops the pin. Writers and purgers finish in seconds; a younger pin is in flight.
LEASE_S = 60.0
# How long a writer waits for a purge of its content to end before answering 503.
PIN_WAIT_S = 10.0
# How long a writer whose pin was lost waits to claim what it wrote, before leaving it to
# reconcile (a delete-all of a large store can hold its claims this long).
CLEANUP_WAIT_S = 30.0
POLL_S = 0.05
# The object layout this service writes (records.object_key_for, records.thumbnail_key_for).
IMAGE_PREFIX = "meta/image/"
THUMB_PREFIX = "thumb/"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# A tagged search restricts the vector search to the tagged contents up to this many (their
# ids travel in the Milvus filter expression); above, it over-fetches and filters, growing
# the fetch this many times per round up to MAX_TOP_K (IndexService.search_tagged).
TAG_PREFILTER_MAX = 4096
TAG_OVERFETCH_GROWTH = 4


@dataclass(frozen=True)
class Hit:
    record: ImageRecord
    distance: float
    # Region search: where the best match lies (a stored region, a query cell), else None.
    matched_region: MatchedRegion | None = None


@dataclass
class IngestItem:
    new: NewImage
    data: bytes
    vector: np.ndarray | None  # None when the content already has a vector
    thumbnail: bytes = b""  # made by the decoder at ingest; b"": made on first request
    # Region search's vectors of the content (thumbnail view, regions), written with its
    # vector where the collection has regions (IndexService.region_index).
    regions: RegionVectors | None = None


@dataclass(frozen=True)
class SearchPage:
    """The page one search asks for: `limit` hits after `offset`, within `threshold`."""

    offset: int
    limit: int
    threshold: float | None = None

    @property
    def want(self) -> int:
        return self.offset + self.limit

    @property
    def fetch(self) -> int:
        # A little more than needed: hits without a row (mid-ingest or orphaned) are dropped,
        # and one vector can stand for several rows with the same bytes.
        return min(MAX_TOP_K, self.want + 16)


@dataclass(frozen=True)
class GlobalQuery:
    """One untagged whole-picture search: by its vector, or by a stored image's."""

    page: SearchPage
    vector: np.ndarray | None = None
    meta_uuid: str = ""  # when vector is None


def content_key(new: NewImage) -> ContentKey:
    return ContentKey(new.milvus_id, new.sha256, new.file_path)


class IndexService:
    """What the Indexer deployment and the backfill writers call."""

    def __init__(
        self, stores: Stores, max_pixels: int = 40_000_000, thumbnail_size: int = 256
    ) -> None:
        self.stores = stores
        self.max_pixels = max_pixels
        self.thumbnail_size = thumbnail_size
        self.tag_prefilter_max = TAG_PREFILTER_MAX

    @classmethod
    def from_settings(cls, settings: Settings) -> IndexService:
        """The stores named in settings, bound to the configured model's collection."""
        return cls(
            open_stores(settings), settings.limits.max_pixels, settings.server.thumbnail_size
        )

    def ensure_stores(self) -> None:
        """Create the schema and the collection (explicitly, never at import).

        Raises ConfigError when the collection was built by another model.
        """
        self.stores.metadata.create_schema()
        self.stores.vectors.ping()
        regions = self.region_index()
        if regions is not None:
            regions.ping()  # creates the region collection beside a new vector collection

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

    def index(self, item: IngestItem) -> ImageRecord:
        """One upload, planned and written in one call; raises what index_many returns."""
        result = self.index_many([item])[0]
        if isinstance(result, SearchEngineError):
            raise result
        return result

    def index_many(self, items: Sequence[IngestItem]) -> list[ImageRecord | SearchEngineError]:
        """Uploads planned and written in one call (one trip from the ingress, not two).

        Their vectors were computed before the plan: dropped where the content already has
        one. A taken meta_uuid (or one already holding these bytes) gets a Conflict; an item
        sees what the earlier ones in the same call will write.
        """
        plans = self.plan([PlanItem(it.new.meta_uuid, it.new.sha256) for it in items])
        out: list[ImageRecord | SearchEngineError | None] = [None] * len(items)
        todo: list[int] = []
        for i, (it, plan) in enumerate(zip(items, plans, strict=True)):
            if not plan.writes:
                out[i] = Conflict(f"meta_uuid {it.new.meta_uuid!r} already exists")
            else:
                todo.append(i)
        written = self.ingest_many([
            dataclasses.replace(items[i], vector=None) if plans[i].status == "known" else items[i]
            for i in todo
        ])  # fmt: skip
        for i, result in zip(todo, written, strict=True):
            out[i] = result
        return [r if r is not None else SearchEngineError("not processed") for r in out]

    def ingest(self, item: IngestItem) -> ImageRecord:
        result = self.ingest_many([item])[0]
        if isinstance(result, SearchEngineError):
            raise result
        return result

    def ingest_many(self, items: Sequence[IngestItem]) -> list[ImageRecord | SearchEngineError]:
        """Write a batch; each item succeeds or fails on its own (its error is returned)."""
        tokens = self._pin([content_key(it.new) for it in items])
        out: list[ImageRecord | SearchEngineError] = [
            StoreUnavailable("this content is being deleted right now; retry", "metadata")
            for _ in items
        ]
        open_pins = [i for i, it in enumerate(items) if it.new.milvus_id in tokens]
        try:
            pinned = [items[i] for i in open_pins]
            self._write_data(pinned)
            missing = self._missing_vectors([it for it in pinned if it.vector is None])
            while open_pins:
                # Taken off first: a pin is given back at most once (tokens are per content,
                # so a second release would take another writer's pin).
                i = open_pins.pop(0)
                out[i] = self._commit(items[i], tokens[items[i].new.milvus_id], missing)
        finally:
            # Only after an exception (a store down mid-batch): give back the pins not used.
            for i in open_pins:
                self._release_quietly(content_key(items[i].new), tokens[items[i].new.milvus_id])
        return out

    def _pin(self, keys: Sequence[ContentKey]) -> dict[int, str]:
        """Pin every content, waiting (bounded) for purges of some of them to end."""
        tokens: dict[int, str] = {}
        pending = list(keys)
        deadline = time.monotonic() + PIN_WAIT_S
        while pending:
            tokens.update(self.stores.metadata.pin(pending, LEASE_S))
            pending = [k for k in pending if k.milvus_id not in tokens]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        return tokens

    def _write_data(self, items: Sequence[IngestItem]) -> None:
        """Side effects first, batched: objects, then one vector upsert for the whole batch."""
        st = self.stores
        for item in items:
            if not st.objects.exists(item.new.file_path):
                st.objects.put(item.new.file_path, item.data, item.new.mime)
            if item.thumbnail:
                key = thumbnail_key_for(item.new.sha256, self.thumbnail_size)
                st.objects.put(key, item.thumbnail, "image/jpeg")
        # One vector per content: uploads batched together may carry the same bytes twice.
        by_id = {it.new.milvus_id: it.vector for it in items if it.vector is not None}
        if by_id:
            st.vectors.upsert(list(by_id), np.stack(list(by_id.values())))
        regions = self.region_index()
        parts = {it.new.milvus_id: it.regions for it in items if it.regions is not None}
        if regions is not None and parts:
            # Before the commit, like the vector: a row never exists without its regions.
            regions.upsert_parts(list(parts), [p.vectors for p in parts.values()],
                                 [p.boxes for p in parts.values()])  # fmt: skip

    def _commit(
        self, item: IngestItem, token: str, missing: set[int]
    ) -> ImageRecord | SearchEngineError:
        """The commit that makes one item visible; its pin is used up whatever happens."""
        key = content_key(item.new)
        if item.new.milvus_id in missing:
            self._release(key, token)
            return StoreUnavailable("content is known but its vector is missing", "vectors")
        if item.vector is not None and item.regions is None and self.region_index() is not None:
            # A writer that did not make region vectors (the collection gained them after it
            # started, mid-switch): retryable, the next try goes through the new graph.
            self._release(key, token)
            return StoreUnavailable("this collection needs region vectors; retry", "vectors")
        try:
            return self.stores.metadata.commit(item.new, token)
        except Conflict as exc:
            self._release(key, token)
            return exc
        except PinLost as exc:
            self._clean_up(key)
            return exc

    def _missing_vectors(self, items: Sequence[IngestItem]) -> set[int]:
        """Known content must really have its vector before a new row may point at it."""
        ids = [it.new.milvus_id for it in items]
        found = self.stores.vectors.get(ids) if ids else {}
        regions = self.region_index()
        need_parts = [it.new.milvus_id for it in items if it.regions is None]
        if regions is not None and need_parts:
            # And, where the collection has regions, its region vectors (unless this write
            # brought them).
            have = regions.owners_with_parts(need_parts)
            found = {i: v for i, v in found.items() if i in have or i not in need_parts}
        return set(ids) - set(found)

    def _release(self, key: ContentKey, token: str) -> None:
        try:
            purge = self.stores.metadata.release(key.milvus_id, token)
        except PinLost:
            self._clean_up(key)
            return
        if purge is not None:
            self.purge(purge)

    def _release_quietly(self, key: ContentKey, token: str) -> None:
        try:
            self._release(key, token)
        except SearchEngineError as exc:
            # The pin stays until reconcile finds it stale; nothing visible depends on it.
            logger.warning("could not release the pin of content %d: %s", key.milvus_id, exc)

    def _clean_up(self, key: ContentKey) -> None:
        """After a lost pin: delete what this writer wrote, unless a live generation owns it."""
        md = self.stores.metadata
        deadline = time.monotonic() + CLEANUP_WAIT_S
        while True:
            purge = md.claim(key, LEASE_S)
            if purge is not None:
                self.purge(purge)
                return
            state = md.content_state(key.milvus_id)
            if state is not None and state != PURGING:
                return  # live again: another writer's row or pin references these bytes
            if time.monotonic() > deadline:
                logger.warning("content %d stays claimed by another purge; reconcile will "
                               "remove what this writer left", key.milvus_id)  # fmt: skip
                return
            time.sleep(POLL_S)

    def purge(self, purge: Purge, extra_keys: Sequence[str] = ()) -> None:
        """Carry out a purge: delete the claimed content's data, then forget its content row."""
        with self._abandoning(purge.token, [purge.key.milvus_id]):
            self._delete_data([purge.key], extra_keys)
        if not self.stores.metadata.end_purge(purge.token, [purge.key.milvus_id]):
            logger.warning("the purge of content %d was taken over", purge.key.milvus_id)

    @contextmanager
    def _abandoning(self, token: str, milvus_ids: Sequence[int]) -> Iterator[None]:
        """A purge that fails midway (a store down) is given up at once: otherwise a writer of
        the same content would wait out the whole lease for a purge nobody is carrying out."""
        try:
            yield
        except SearchEngineError:
            try:
                self.stores.metadata.abandon_purge(token, milvus_ids)
            except SearchEngineError as exc:
                logger.warning("could not abandon the purge of %d contents: %s",
                               len(milvus_ids), exc)  # fmt: skip
            raise

    def _delete_data(self, keys: Sequence[ContentKey], extra_keys: Sequence[str] = ()) -> None:
        # Vectors first: a crash midway leaves an object, which names the content for
        # reconcile. Region vectors before the vector, which names them in turn.
        regions = self.region_index()
        if regions is not None:
            regions.delete_owners([k.milvus_id for k in keys])
        self.stores.vectors.delete([k.milvus_id for k in keys])
        for k in keys:
            if k.file_path:
                self.stores.objects.delete(k.file_path)
            if k.sha256:
                self.stores.objects.delete(thumbnail_key_for(k.sha256, self.thumbnail_size))
        for extra in extra_keys:
            self.stores.objects.delete(extra)

    def purge_orphan(self, key: ContentKey, extra_keys: Sequence[str] = ()) -> bool:
        """Delete content that nothing references (plus extra_keys of it, e.g. thumbnails of
        another size); False, touching nothing, while a row or pin references it."""
        purge = self.stores.metadata.claim(key, LEASE_S)
        if purge is None:
            return False
        self.purge(purge, extra_keys)
        return True

    @contextmanager
    def holding(self, milvus_ids: Sequence[int]) -> Iterator[list[int]]:
        """Pin contents that have rows while writing to them outside ingest (a re-embed);
        yields the ids held (a content deleted meanwhile is left out)."""
        md = self.stores.metadata
        held: dict[int, str] = {}
        try:
            for mid in sorted(set(milvus_ids)):
                token = md.hold(mid)
                if token is not None:
                    held[mid] = token
            yield sorted(held)
        finally:
            for mid, token in held.items():
                self._release_quietly(ContentKey(mid), token)

    def delete(self, meta_uuid: str) -> ImageRecord:
        removal = self.stores.metadata.delete(meta_uuid)
        if removal is None:
            raise NotFound(f"image {meta_uuid!r} not found")
        if removal.purge is not None:
            self.purge(removal.purge)
        return removal.record

    def delete_all(self, chunk: int = 1000) -> int:
        """Admin wipe: rows first (nothing stays visible), then every vector and object."""
        st = self.stores
        wipe = st.metadata.delete_all()
        for start in range(0, len(wipe.contents), chunk):
            keys = wipe.contents[start : start + chunk]
            with self._abandoning(wipe.token, [k.milvus_id for k in wipe.contents[start:]]):
                self._delete_data(keys)
            st.metadata.end_purge(wipe.token, [k.milvus_id for k in keys])
        leftovers = self._purge_unclaimed()
        logger.warning("deleted all %d images (%d distinct contents, %d leftovers)",
                       wipe.rows, len(wipe.contents), leftovers)  # fmt: skip
        return wipe.rows

    def _purge_unclaimed(self) -> int:
        """What delete_all's claims did not cover: crash leftovers and foreign objects."""
        st, n = self.stores, 0
        for key in list(st.objects.keys()):
            sha = sha_of_key(key)
            if sha is None:
                st.objects.delete(key)  # not ours to arbitrate, and "all" means all
                n += 1
            elif key.startswith(THUMB_PREFIX):
                n += self.purge_orphan(ContentKey(milvus_id_for(sha), sha), [key])
            else:
                n += self.purge_orphan(ContentKey(milvus_id_for(sha), sha, key))
        for mid in list(st.vectors.ids()):
            n += self.purge_orphan(ContentKey(mid))
        regions = self.region_index()
        for mid in list(regions.owners()) if regions is not None else []:
            n += self.purge_orphan(ContentKey(mid))
        return n

    # -- region search ----------------------------------------------------------------------
    def region_index(self) -> RegionIndex | None:
        """The region collection, where the vector collection records that it has one (it
        was created with region search on; image_search/regions.py); else None."""
        if self.stores.regions is None or not records_regions(self.stores.vectors):
            return None
        return self.stores.regions

    def search_regions(
        self,
        vector: np.ndarray,
        cells: RegionVectors | None,
        offset: int,
        limit: int,
        threshold: float | None = None,
        tags: Sequence[str] = (),
    ) -> list[Hit]:
        """Region search: the query's global vector and its cells, each searched against the
        images' global vectors and their parts (thumbnail view, regions), merged per image
        by best adjusted score (image_search.regions.merge); `distance` stays the raw
        distance of that best match. Conflict where the collection has no region vectors.
        With `tags`, the merged candidates are filtered (no pre-filter: a tagged image
        outside every query vector's over-fetch is not found, a short page)."""
        regions = self.region_index()
        if regions is None:
            raise Conflict(
                "this collection has no region vectors: search with mode=global, or build "
                "them with `python -m pipelines.reembed --regions --collection NEW` "
                "(README, Region search)"
            )
        want = offset + limit
        # Over-fetch (fetch_sizes): rows without a row are dropped, as in search.
        n_images, n_parts = fetch_sizes(min(MAX_TOP_K, want + 16))
        n_images, n_parts = min(MAX_TOP_K, n_images), min(MAX_TOP_K, n_parts)
        queries = np.concatenate([vector.reshape(1, -1)] + (
            [cells.vectors] if cells is not None and len(cells.vectors) else []))  # fmt: skip
        labels: list[str | None] = [None] + (list(cells.labels) if cells is not None else [])
        boxes = [None] + (list(cells.boxes) if cells is not None else [])
        # Parts at a typical count per image first; at the bound only for the query vectors
        # whose first fetch holds fewer than n_images images (parts_suffice): same result.
        first = first_part_fetch(n_images, n_parts)
        parts = regions.search_parts(queries, first)
        short = [i for i, hits in enumerate(parts)
                 if not parts_suffice([h.owner for h in hits], first, n_images)]  # fmt: skip
        if short and first < n_parts:
            for i, hits in zip(short, regions.search_parts(queries[short], n_parts), strict=True):
                parts[i] = hits
        found = []
        for q, label, box, part_hits in zip(queries, labels, boxes, parts, strict=True):
            cands = [Candidate(h.id, h.distance) for h in self.stores.vectors.search(q, n_images)]
            cands += [Candidate(h.owner, h.distance, h.part, h.box) for h in part_hits]
            found.append(QueryHits(cands, label, box))
        scored = merge(found)
        if threshold is not None:
            scored = [s for s in scored if s.distance <= threshold]
        if not tags:
            scored = scored[: want + 16]  # as search: rowless hits, vectors shared by rows
        rows = self.stores.metadata.by_milvus_ids([s.owner for s in scored], tags)
        out = [Hit(rec, s.distance, s.region) for s in scored for rec in rows.get(s.owner, [])]
        return out[offset:want]

    # -- reads ----------------------------------------------------------------------------
    def get(self, meta_uuid: str) -> ImageRecord:
        rec = self.stores.metadata.get(meta_uuid)
        if rec is None:
            raise NotFound(f"image {meta_uuid!r} not found")
        return rec

    def page(
        self, offset: int, limit: int, tags: Sequence[str] = (), before: int | None = None
    ) -> tuple[list[ImageRecord], int]:
        """One page, newest first, and the total; with `tags`, of the images carrying all;
        with `before`, of the images older than the row with that id."""
        md = self.stores.metadata
        return md.page(offset, limit, tags, before), md.count(tags)

    def tag_counts(self, limit: int) -> list[TagCount]:
        return self.stores.metadata.tag_counts(limit)

    def counts(self, tags: Sequence[str] = ()) -> tuple[int, int]:
        """Rows (with `tags`: those carrying all of them) and the whole index's vectors."""
        return self.stores.metadata.count(tags), self.stores.vectors.count()

    def stored_vector(self, meta_uuid: str) -> np.ndarray:
        """The vector an image is indexed by, for a search with a stored image."""
        found = self.stored_vectors([meta_uuid])[0]
        if isinstance(found, SearchEngineError):
            raise found
        return found

    def stored_vectors(self, meta_uuids: Sequence[str]) -> list[np.ndarray | SearchEngineError]:
        """stored_vector for each, with one vector read for all: a NotFound (or a missing
        vector) is that image's error, not the others'."""
        rows = self.stores.metadata.get_many(meta_uuids)
        records = [rows.get(uuid) for uuid in meta_uuids]
        ids = list({r.milvus_id for r in records if r is not None})
        # At the searches' consistency first: a committed row's vector was written before
        # the row, so only a vector written by another process a moment ago can be missed,
        # and a fresh read finds that one.
        found = self.stores.vectors.get(ids, fresh=False)
        missed = [i for i in ids if i not in found]
        if missed:
            found.update(self.stores.vectors.get(missed))
        out: list[np.ndarray | SearchEngineError] = []
        for uuid, rec in zip(meta_uuids, records, strict=True):
            if rec is None:
                out.append(NotFound(f"image {uuid!r} not found"))
            elif rec.milvus_id in found:
                out.append(found[rec.milvus_id])
            else:
                out.append(StoreUnavailable(f"vector of {uuid!r} is missing; run reconcile",
                                            "vectors"))  # fmt: skip
        return out

    def search_stored(
        self,
        meta_uuid: str,
        offset: int,
        limit: int,
        threshold: float | None = None,
        tags: Sequence[str] = (),
    ) -> list[Hit]:
        """search() with a stored image's vector: one call where the stores are."""
        return self.search(self.stored_vector(meta_uuid), offset, limit, threshold, tags)

    def search(
        self,
        vector: np.ndarray,
        offset: int,
        limit: int,
        threshold: float | None = None,
        tags: Sequence[str] = (),
    ) -> list[Hit]:
        """Nearest images, ascending squared-L2 distance; rows fetched in one query (two
        where some of the first hits have no row). With `tags`, only images that carry every
        one of them (search_tagged)."""
        if tags:
            return self.search_tagged(vector, offset, limit, threshold, tags)
        return self.search_vectors([vector], [SearchPage(offset, limit, threshold)])[0]

    def search_global(self, queries: Sequence[GlobalQuery]) -> list[list[Hit] | SearchEngineError]:
        """Untagged searches together, by vector or by stored image (the Indexer's batch):
        one vector read for the stored ones, then search_vectors for all. Each gets its own
        page or error."""
        out: list[list[Hit] | SearchEngineError] = [[] for _ in queries]
        stored = [i for i, q in enumerate(queries) if q.vector is None]
        vectors = {i: q.vector for i, q in enumerate(queries) if q.vector is not None}
        for i, found in zip(stored, self.stored_vectors([queries[i].meta_uuid for i in stored]),
                            strict=True):  # fmt: skip
            if isinstance(found, SearchEngineError):
                out[i] = found
            else:
                vectors[i] = found
        todo = sorted(vectors)
        pages = self.search_vectors([vectors[i] for i in todo], [queries[i].page for i in todo])
        for i, page in zip(todo, pages, strict=True):
            out[i] = page
        return out

    def search_vectors(
        self, vectors: Sequence[np.ndarray], pages: Sequence[SearchPage]
    ) -> list[list[Hit]]:
        """search() (untagged) for each vector and its page, in as few store calls as their
        pages allow: one vector search per distinct fetch size and one row query for all.

        Grouped by fetch size so that each query's vector search is the one it would make
        alone (an HNSW search's ef follows its limit): its answer never depends on the
        company it was batched with."""
        by_fetch: dict[int, list[int]] = {}
        for i, page in enumerate(pages):
            by_fetch.setdefault(page.fetch, []).append(i)
        hits: list[list[VectorHit]] = [[] for _ in pages]
        for fetch, idx in by_fetch.items():
            answers = self.stores.vectors.search_many(np.stack([vectors[i] for i in idx]), fetch)
            for i, h in zip(idx, answers, strict=True):
                threshold = pages[i].threshold
                hits[i] = h if threshold is None else [x for x in h if x.distance <= threshold]
        md = self.stores.metadata
        firsts = {h.id for found, page in zip(hits, pages, strict=True) for h in found[: page.want]}
        rows = md.by_milvus_ids(list(firsts))
        out: list[list[Hit]] = []
        for found, page in zip(hits, pages, strict=True):
            shown = sum(len(rows.get(h.id, [])) for h in found[: page.want])
            if shown < page.want and len(found) > page.want:
                # Some of the first hits have no row (a rare case): the spare hits' rows too.
                spare = [h.id for h in found[page.want :] if h.id not in rows]
                rows.update(md.by_milvus_ids(spare))
            ranked = [Hit(rec, max(0.0, h.distance)) for h in found for rec in rows.get(h.id, [])]
            out.append(ranked[page.offset : page.want])
        return out

    def search_tagged(
        self,
        vector: np.ndarray,
        offset: int,
        limit: int,
        threshold: float | None,
        tags: Sequence[str],
    ) -> list[Hit]:
        """Nearest images that carry every one of `tags`.

        Up to tag_prefilter_max contents carry them: the vector search is restricted to those
        (Milvus filters by id before ranking), so the page is exact within the tag. More: the
        nearest vectors are fetched and the tagged rows kept, fetching TAG_OVERFETCH_GROWTH
        times more while a page is short, up to MAX_TOP_K; a tagged image that is not among
        the nearest MAX_TOP_K vectors of the whole library is then not found (a short page).
        """
        want = offset + limit
        fetch = min(MAX_TOP_K, want + 16)  # as search: rowless hits, vectors shared by rows
        ids = self.stores.metadata.tagged_contents(tags, self.tag_prefilter_max)
        if ids is not None:
            hits = self.stores.vectors.search(vector, fetch, ids=ids)
            return self._tagged_hits(hits, threshold, tags)[offset:want]
        fetch = min(MAX_TOP_K, fetch * TAG_OVERFETCH_GROWTH)
        while True:
            hits = self.stores.vectors.search(vector, fetch)
            out = self._tagged_hits(hits, threshold, tags)
            beyond = threshold is not None and bool(hits) and hits[-1].distance > threshold
            if len(out) >= want or len(hits) < fetch or fetch >= MAX_TOP_K or beyond:
                return out[offset:want]
            fetch = min(MAX_TOP_K, fetch * TAG_OVERFETCH_GROWTH)

    def _tagged_hits(
        self, hits: Sequence[VectorHit], threshold: float | None, tags: Sequence[str]
    ) -> list[Hit]:
        """One Hit per tagged row of each vector hit within the threshold, in hit order."""
        kept = [h for h in hits if threshold is None or h.distance <= threshold]
        rows = self.stores.metadata.by_milvus_ids([h.id for h in kept], tags)
        return [Hit(rec, max(0.0, h.distance)) for h in kept for rec in rows.get(h.id, [])]

    # -- duplicate review -----------------------------------------------------------------
    @functools.cached_property
    def duplicate_graph(self) -> NeighborGraph:
        """The links the duplicate review keeps between requests (image_search.duplicates)."""
        return NeighborGraph()

    def duplicates(self, query: DuplicateQuery) -> DuplicatePage:
        """Groups of copies and near-duplicates, best copy first, one page of them."""
        return self.duplicate_graph.page(self.stores, query)

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
        # Held while it is written: a delete of the last row meanwhile purges it afterwards.
        token = self.stores.metadata.hold(rec.milvus_id)
        if token is None:
            raise NotFound(f"image {meta_uuid!r} not found")
        try:
            thumb = thumbnail_jpeg(self.stores.objects.get(rec.file_path), size, self.max_pixels)
            self.stores.objects.put(key, thumb, "image/jpeg")
        finally:
            self._release(ContentKey(rec.milvus_id, rec.sha256, rec.file_path), token)
        return thumb


def sha_of_key(key: str) -> str | None:
    """meta/image/<sha>.<ext> and thumb/<size>/<sha>.jpg -> sha; anything else -> None."""
    for prefix in (IMAGE_PREFIX, THUMB_PREFIX):
        if key.startswith(prefix):
            stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
            return stem if _SHA_RE.match(stem) else None
    return None
