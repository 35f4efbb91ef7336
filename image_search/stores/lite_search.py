"""A search path for the Milvus Lite server that costs per search what the index costs.

Milvus Lite 3.2.2 decides which rows a search may return (the newest version of each primary
key, minus deleted ones) by walking every stored row in Python on every search: about 0.4 us a
row, 40 ms at 100,000 vectors and 0.1 s at 250,000 (bench.lite_search), against a few
milliseconds for the faiss HNSW search itself. The answer only changes when segments do (a
flush or a compaction), and between those changes only by the few rows still in the memtable
and the deletes. So this module works it out once per set of segments with numpy, then per
search corrects it for the memtable and the tombstones by primary-key lookups, and asks each
segment's index exactly as Milvus Lite does, with the same masks: the same hits, the same
distances, in the same order (tests/unit/image_search/stores/test_lite_search.py compares the
two on upserts, deletes, several segments and unflushed rows).

Only the plain case is taken over: integer primary keys, no filter expression, no partitions,
no nullable vectors, no within-segment duplicates. Anything else, and any Milvus Lite other
than the version this was written against, goes to Milvus Lite's own function.

`python -m image_search.stores.lite_search server ...` starts Milvus Lite's server with this in
place; lite_server.py starts it that way.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger("image_search.stores.lite_search")  # also when run as __main__

Row = dict[str, Any]  # a stored row, or a hit, as Milvus Lite's executor takes and returns them

# The Milvus Lite this path was written and tested against: its executor's signature and the
# Segment/MemTable/DeltaIndex members used here are not a public API.
SUPPORTED_VERSION = "3.2.2"

# Above this many superseded keys (deletes and memtable rewrites) one numpy pass per segment
# beats a key lookup per key.
VECTORIZE_SUPERSEDED_ABOVE = 4096


@dataclass(frozen=True)
class _SegmentState:
    """Per segment of one set of segments: its keys, and its rows that win among the set alone."""

    pks: tuple[np.ndarray, ...]
    winners: tuple[np.ndarray | None, ...]  # None: every row of that segment wins


def _name(segment: Any) -> tuple[str, int]:
    # Segment files are immutable and never reuse a name (a compaction writes a new one), so a
    # path names a segment without holding on to one that a compaction replaced.
    return str(segment.file_path), int(segment.num_rows)


class _Cache:
    """The state of the latest set of segments, and what is known of each segment in it.

    A flush adds a small segment to a set that is otherwise the same: its keys are checked
    against each other segment's sorted keys (a binary search each), not the whole set again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[tuple[str, int], ...] | None = None
        self._state: _SegmentState | None = None
        self._keys: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}  # as is, sorted
        self._disjoint: set[frozenset[tuple[str, int]]] = set()  # pairs sharing no key

    def get(self, segments: tuple[Any, ...]) -> _SegmentState:
        names = tuple(_name(s) for s in segments)
        with self._lock:
            if names == self._key and self._state is not None:
                return self._state
            keys, disjoint = dict(self._keys), set(self._disjoint)
        for name, seg in zip(names, segments, strict=True):
            if name not in keys:
                own = np.asarray(seg.pks, dtype=np.int64)
                keys[name] = (own, np.sort(own))
        pks = tuple(keys[n][0] for n in names)
        if _all_disjoint(names, keys, disjoint):
            state = _SegmentState(pks, tuple(None for _ in segments))
        else:
            state = _segment_state(segments, pks)
        with self._lock:
            self._key, self._state = names, state
            self._keys = {n: keys[n] for n in names}
            current = set(names)
            self._disjoint = {p for p in disjoint if p <= current}
        return state


def _all_disjoint(
    names: tuple[tuple[str, int], ...],
    keys: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]],
    disjoint: set[frozenset[tuple[str, int]]],
) -> bool:
    """Whether no key is in two segments; adds each pair found to share none to `disjoint`."""
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pair = frozenset((a, b))
            if pair in disjoint:
                continue
            if _share_a_key(keys[a][1], keys[b][1]):
                return False
            disjoint.add(pair)
    return True


def _share_a_key(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two sorted key arrays have a key in common (the smaller searched in the larger)."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    if not len(small) or not len(large):
        return False
    at = np.minimum(np.searchsorted(large, small), len(large) - 1)
    return bool((large[at] == small).any())


_cache = _Cache()


def _segment_state(segments: tuple[Any, ...], pks: tuple[np.ndarray, ...]) -> _SegmentState:
    """Where keys repeat across segments: a row wins when its seq is its key's largest."""
    sizes = [len(p) for p in pks]
    all_pks = np.concatenate(pks)
    all_seqs = np.concatenate([np.asarray(s.seqs, dtype=np.int64) for s in segments])
    order = np.lexsort((all_seqs, all_pks))
    sorted_pks, sorted_seqs = all_pks[order], all_seqs[order]
    starts = np.flatnonzero(np.r_[True, sorted_pks[1:] != sorted_pks[:-1]])
    largest = np.repeat(
        np.maximum.reduceat(sorted_seqs, starts), np.diff(np.r_[starts, len(sorted_pks)])
    )
    wins = np.empty(len(all_pks), dtype=bool)
    wins[order] = sorted_seqs == largest
    parts = np.split(wins, np.cumsum(sizes)[:-1])
    return _SegmentState(pks, tuple(None if bool(p.all()) else p for p in parts))


def _plain_case(
    segments: tuple[Any, ...],
    vector_field: str,
    partition_names: Sequence[str] | None,
    compiled_filter: Any,
    project_record_fn: Callable[[Row], Row] | None,
) -> bool:
    if compiled_filter is not None or partition_names or project_record_fn is None:
        return False
    for seg in segments:
        # pk_to_row keeps one row per key: a segment holding a key twice needs the full walk.
        if len(seg.pk_to_row) != seg.num_rows or not isinstance(seg.pks[0], int):
            return False
        if seg.vector_data(vector_field)[1] is not None:
            return False
    return True


def _newest_tombstones(delta: Any, memtable_deletes: dict[Any, Any]) -> dict[int, int]:
    """Each deleted key's largest delete seq, flushed (DeltaIndex) or still in the memtable."""
    tombs: dict[int, int] = dict(delta.snapshot)
    for pk, entry in memtable_deletes.items():
        seq = int(entry[0])
        if seq > tombs.get(pk, -1):
            tombs[pk] = seq
    return tombs


def _segment_masks(
    segments: tuple[Any, ...],
    state: _SegmentState,
    superseded: dict[int, int],
) -> list[np.ndarray | None]:
    """Each segment's rows a search may return, or None where it may return all of them.

    `superseded` maps a key to the seq of its newest write in the memtable or its newest delete:
    a segment's row of that key with a smaller seq is hidden.
    """
    masks: list[np.ndarray | None] = list(state.winners)
    if len(superseded) <= VECTORIZE_SUPERSEDED_ABOVE:
        for i, seg in enumerate(segments):
            lookup, seqs = seg.pk_to_row, seg.seqs
            for pk, newer in superseded.items():
                row = lookup.get(pk)
                if row is None or int(seqs[row]) >= newer:
                    continue
                mask = masks[i]
                if mask is None or mask is state.winners[i]:  # copy before the first change
                    mask = np.ones(seg.num_rows, bool) if mask is None else mask.copy()
                    masks[i] = mask
                mask[row] = False
        return masks
    keys = np.fromiter(superseded.keys(), dtype=np.int64, count=len(superseded))
    at = np.fromiter(superseded.values(), dtype=np.int64, count=len(superseded))
    order = np.argsort(keys)
    keys, at = keys[order], at[order]
    for i, seg in enumerate(segments):
        pks = state.pks[i]
        pos = np.minimum(np.searchsorted(keys, pks), len(keys) - 1)
        hidden = (keys[pos] == pks) & (at[pos] > np.asarray(seg.seqs, dtype=np.int64))
        if hidden.any():
            base = masks[i]
            masks[i] = ~hidden if base is None else base & ~hidden
    return masks


def _memtable_mask(
    segments: tuple[Any, ...],
    mt_pks: list[Any],
    mt_seqs: np.ndarray,
    memtable_newest: dict[int, int],
    tombs: dict[int, int],
) -> np.ndarray:
    mask = np.zeros(len(mt_pks), dtype=bool)
    for j, pk in enumerate(mt_pks):
        seq = int(mt_seqs[j])
        newest = memtable_newest[pk]
        for seg in segments:
            row = seg.pk_to_row.get(pk)
            if row is not None:
                newest = max(newest, int(seg.seqs[row]))
        mask[j] = seq == newest and tombs.get(pk, -1) <= seq
    return mask


def fast_search(
    upstream: Callable[..., list[list[Row]]],
    query_vectors: np.ndarray,
    segments: Any,
    memtable: Any,
    delta_index: Any,
    top_k: int,
    metric_type: str,
    pk_field: str,
    vector_field: str,
    partition_names: list[str] | None = None,
    compiled_filter: Any = None,
    output_fields: list[str] | None = None,
    indexed_filter_plan: Any = None,
    project_record_fn: Callable[[Row], Row] | None = None,
    search_params: dict[str, Any] | None = None,
) -> list[list[Row]]:
    """Milvus Lite's execute_search_with_index, the same answer without a walk over every row."""
    segs = tuple(s for s in segments if s.num_rows > 0)
    args = dict(
        query_vectors=query_vectors, segments=segs, memtable=memtable, delta_index=delta_index,
        top_k=top_k, metric_type=metric_type, pk_field=pk_field, vector_field=vector_field,
        partition_names=partition_names, compiled_filter=compiled_filter,
        output_fields=output_fields, indexed_filter_plan=indexed_filter_plan,
        project_record_fn=project_record_fn, search_params=search_params,
    )  # fmt: skip
    queries = np.asarray(query_vectors, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries.reshape(1, -1)
    if top_k <= 0 or len(queries) == 0 or not segs:
        return upstream(**args)
    if not _plain_case(segs, vector_field, partition_names, compiled_filter, project_record_fn):
        return upstream(**args)
    mt_pks, mt_seqs, mt_vecs, mt_refs, _ = memtable.to_search_snapshot(
        vector_field=vector_field, partition_names=None, include_table=False
    )
    if any(not isinstance(pk, int) for pk in mt_pks):
        return upstream(**args)
    assert project_record_fn is not None  # _plain_case
    state = _cache.get(segs)
    memtable_newest: dict[int, int] = {}
    for pk, seq in zip(mt_pks, np.asarray(mt_seqs).tolist(), strict=True):
        if seq > memtable_newest.get(pk, -1):
            memtable_newest[pk] = int(seq)
    tombs = _newest_tombstones(delta_index, memtable.delete_index_snapshot())
    superseded = dict(tombs)
    for pk, seq in memtable_newest.items():
        superseded[pk] = max(seq, superseded.get(pk, -1))
    masks: list[np.ndarray | None] = _segment_masks(segs, state, superseded)
    vectors = [seg.vector_data(vector_field)[0] for seg in segs]
    indexes = [seg.indexes.get(vector_field) for seg in segs]
    if mt_pks:
        masks.append(_memtable_mask(segs, mt_pks, mt_seqs, memtable_newest, tombs))
        vectors.append(mt_vecs)
        indexes.append(None)

    # Same per-source recall and merge as Milvus Lite: top_k from each source, then the best
    # top_k overall by (distance, source, row), so ties break the same way.
    from milvus_lite.index.brute_force import BruteForceIndex

    candidates: list[list[tuple[float, int, int]]] = [[] for _ in range(len(queries))]
    for source, (mask, vecs, index) in enumerate(zip(masks, vectors, indexes, strict=True)):
        if mask is not None and not mask.any():
            continue
        if index is None:
            index = BruteForceIndex.build(vecs, metric_type)
        valid = None if mask is None or mask.all() else mask
        rows, dists = index.search(queries, top_k, valid_mask=valid, params=search_params)
        for q in range(len(queries)):
            for j in range(top_k):
                row = int(rows[q, j])
                if row < 0:
                    break
                candidates[q].append((float(dists[q, j]), source, row))

    results: list[list[Row]] = []
    for found in candidates:
        found.sort()
        hits = []
        for dist, source, row in found[:top_k]:
            if source < len(segs):
                record = segs[source].row_to_dict(row)
            else:
                record = memtable.materialize_row(*mt_refs[row])
            pk = (
                record[pk_field]
                if pk_field in record
                else (segs[source].pks[row] if source < len(segs) else mt_pks[row])
            )
            hits.append({"id": pk, "distance": dist, "entity": project_record_fn(record)})
        results.append(hits)
    return results


def install() -> bool:
    """Put fast_search in place of Milvus Lite's executor in this process; False if not done."""
    import milvus_lite
    import milvus_lite.engine.collection as collection

    version = getattr(milvus_lite, "__version__", "")
    if version != SUPPORTED_VERSION:
        logger.warning(
            "Milvus Lite %s is not %s: its own search path is used (a walk over every row)",
            version, SUPPORTED_VERSION,
        )  # fmt: skip
        return False
    upstream = collection.execute_search_with_index

    def search(*args: Any, **kwargs: Any) -> list[list[Row]]:
        return fast_search(upstream, *args, **kwargs)

    collection.execute_search_with_index = search
    logger.info("Milvus Lite %s: searches without the walk over every stored row", version)
    return True


def main(argv: list[str] | None = None) -> int:
    """Milvus Lite's command line (`server --data-dir ...`) with fast_search installed."""
    # Warnings and errors only, as Milvus Lite's own command line leaves them (its INFO lines
    # and faiss's are noise in the server's log); this module's own line says what runs.
    logging.basicConfig(level=logging.WARNING)
    logger.setLevel(logging.INFO)
    install()
    from milvus_lite.cmdline import main as lite_main

    return int(lite_main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
