"""Reconcile the three stores: report what disagrees; with --fix, repair what is safe to repair.

    python -m pipelines.reconcile [--fix] [--grace 600] [--report out.json]

--fix deletes orphan vectors and objects older than the grace period and re-embeds rows whose
vector is missing (a Ray Data job, same stages as the backfill). It never deletes a row: rows
are the source of truth, and one whose object is gone is reported as unrecoverable. Where the
collection has region vectors, orphan ones (no row, no vector) go the way orphan vectors do,
and a content whose region vectors are missing is re-embedded like one without a vector.

Ages: the ingest writes the object before the vector, so a vector is as old as its object. An
orphan vector with a young object may belong to an ingest in flight and is kept; one with no
object at all belongs to no ingest in flight and goes.

Every deletion happens under a claim on the content (IndexService.purge_orphan): the claim
fails while a row or an in-flight writer's pin references the content, in any process, so
reconcile never deletes what an upload is reusing or writing. It also reports contents whose
reference count disagrees with the rows, and pins and purges older than the grace period and
at least LEASE_S (their writer crashed); --fix recounts them and purges what nothing
references. A re-embed holds its contents, so a delete racing it purges the vector it writes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict
from typing import Any

from image_search.config import Settings
from image_search.indexing import LEASE_S, THUMB_PREFIX, IndexService, sha_of_key
from image_search.records import milvus_id_for
from image_search.stores import Stores, open_stores
from image_search.stores.base import ContentKey, RefDrift
from pipelines.findings import (
    Content,
    Findings,
    object_ages,
    scan,
    unreferenced_ids,
)
from pipelines.options import PoolOptions, add_pool_arguments, pool_options_from_args
from pipelines.runtime import (
    add_common_arguments,
    capped,
    ensure_ray,
    job_main,
    settings_from_args,
    write_report,
)
from pipelines.stages import with_retries

logger = logging.getLogger("pipelines.reconcile")
DEFAULT_GRACE_S = 600.0


def describe(f: Findings, drift: list[RefDrift]) -> dict[str, Any]:
    def contents(items: list[Content]) -> list[dict[str, Any]]:
        return [asdict(c) for c in capped(items)]

    return {
        "counts": {
            "rows": f.rows,
            "contents": f.contents,
            "vectors": f.vectors,
            "objects": f.objects,
            "rows_without_vector": len(f.rows_without_vector),
            "rows_without_object": len(f.rows_without_object),
            "orphan_vectors": len(f.orphan_vectors),
            "region_owners": f.region_owners,
            "rows_without_regions": len(f.rows_without_regions),
            "orphan_regions": len(f.orphan_regions),
            "orphan_objects": len(f.orphan_objects),
            "foreign_objects": len(f.foreign_objects),
            "ref_drift": len(drift),
        },
        "consistent": f.consistent and not drift,
        "rows_without_vector": contents(f.rows_without_vector),
        "rows_without_object": contents(f.rows_without_object),
        "orphan_vectors": capped(f.orphan_vectors),
        "rows_without_regions": contents(f.rows_without_regions),
        "orphan_regions": capped(f.orphan_regions),
        "orphan_objects": capped(f.orphan_objects),
        "foreign_objects": capped(f.foreign_objects),
        "ref_drift": [asdict(d) for d in capped(drift)],
    }


def run(
    settings: Settings,
    fix: bool = False,
    grace_s: float = DEFAULT_GRACE_S,
    opts: PoolOptions | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    started = time.monotonic()
    stores = open_stores(settings)
    stores.metadata.create_schema()
    findings, drift = scan(stores), stores.metadata.ref_drift(_lease(grace_s))
    report: dict[str, Any] = {"collection": settings.stores.collection, **describe(findings, drift)}
    if fix:
        report["fix"] = repair(settings, stores, findings, grace_s, opts or PoolOptions(), address)
        after = describe(scan(stores), stores.metadata.ref_drift(_lease(grace_s)))
        report["after"] = after["counts"]
    report["elapsed_s"] = round(time.monotonic() - started, 3)
    logger.info("reconcile %s: %s", "and fix" if fix else "(report only)", report["counts"])
    return report


def repair(
    settings: Settings,
    stores: Stores,
    f: Findings,
    grace_s: float,
    opts: PoolOptions,
    address: str | None,
) -> dict[str, Any]:
    svc = IndexService(stores, settings.limits.max_pixels, settings.server.thumbnail_size)
    out: dict[str, Any] = {"grace_s": grace_s}
    out.update(_repair_refs(svc, grace_s))
    out.update(_delete_orphan_vectors(svc, f, grace_s))
    out.update(_delete_orphan_regions(svc, f, grace_s))
    out.update(_delete_orphan_objects(svc, f, grace_s))
    out.update(_reembed_missing(settings, svc, f, opts, address))
    with_retries("flush", stores.vectors.flush)
    # Rows whose object is gone cannot be rebuilt from this side; a human decides.
    out["unrecoverable_rows"] = [asdict(c) for c in capped(f.rows_without_object)]
    return out


def _lease(grace_s: float) -> float:
    """How old a pin or purge must be to count as crashed: never younger than LEASE_S, which
    writers in flight never reach, whatever grace the orphans get."""
    return max(grace_s, LEASE_S)


def _repair_refs(svc: IndexService, grace_s: float) -> dict[str, Any]:
    md = svc.stores.metadata
    purges = md.repair_refs(_lease(grace_s))
    for purge in purges:
        svc.purge(purge)
    logger.info("recounted references; purged %d contents nothing references", len(purges))
    # The kept image count too (rows bulk-loaded around the store, or by an older version).
    kept, rows = md.recount()
    if kept != rows:
        logger.warning("image count was %d, %d rows: recounted", kept, rows)
    return {"contents_purged": len(purges), "image_count": {"kept": kept, "rows": rows}}


def _delete_orphan_vectors(svc: IndexService, f: Findings, grace_s: float) -> dict[str, Any]:
    deleted, young = _delete_orphan_ids(svc, f, f.orphan_vectors, grace_s)
    logger.info("deleted %d orphan vectors; kept %d younger than %.0fs",
                deleted, len(young), grace_s)  # fmt: skip
    return {"vectors_deleted": deleted, "vectors_kept_in_grace": capped(young)}


def _delete_orphan_regions(svc: IndexService, f: Findings, grace_s: float) -> dict[str, Any]:
    if not f.orphan_regions:
        return {}
    deleted, young = _delete_orphan_ids(svc, f, f.orphan_regions, grace_s)
    logger.info("deleted the region vectors of %d images without a row; kept %d younger "
                "than %.0fs", deleted, len(young), grace_s)  # fmt: skip
    return {"region_owners_deleted": deleted, "region_owners_kept_in_grace": capped(young)}


def _delete_orphan_ids(
    svc: IndexService, f: Findings, ids: list[int], grace_s: float
) -> tuple[int, list[int]]:
    """Purge contents by vector id (their vector and region vectors) that no row references,
    unless their object is younger than the grace period: an ingest may be in flight."""
    stores = svc.stores
    young: list[int] = []
    candidates: list[int] = []
    related = [k for i in ids for k in f.image_keys_by_id.get(i, [])]
    ages = object_ages(stores.objects, related)
    for vid in ids:
        keys = f.image_keys_by_id.get(vid, [])
        # Unknown age (missing from `ages`) counts as young: never delete on a guess.
        if any(ages.get(k, 0.0) < grace_s for k in keys):
            young.append(vid)
        else:
            candidates.append(vid)
    doomed = unreferenced_ids(stores.metadata, candidates) if candidates else []
    # Only the vectors: its object, if any, is an orphan object with its own age.
    deleted = sum(svc.purge_orphan(ContentKey(vid)) for vid in doomed)
    return deleted, young


def _delete_orphan_objects(svc: IndexService, f: Findings, grace_s: float) -> dict[str, Any]:
    stores = svc.stores
    ages = object_ages(stores.objects, f.orphan_objects)
    deleted, young = 0, []
    for key in f.orphan_objects:
        if ages.get(key, 0.0) < grace_s:
            young.append(key)
            continue
        sha = sha_of_key(key)
        if not sha or stores.metadata.references(sha) != 0:
            continue
        if key.startswith(THUMB_PREFIX):
            deleted += svc.purge_orphan(ContentKey(milvus_id_for(sha), sha), [key])
        else:
            deleted += svc.purge_orphan(ContentKey(milvus_id_for(sha), sha, key))
    logger.info("deleted %d orphan objects; kept %d younger than %.0fs",
                deleted, len(young), grace_s)  # fmt: skip
    return {"objects_deleted": deleted, "objects_kept_in_grace": capped(young)}


def _reembed_missing(
    settings: Settings, svc: IndexService, f: Findings, opts: PoolOptions, address: str | None
) -> dict[str, Any]:
    no_object = set(f.rows_without_object)
    todo = [c for c in [*f.rows_without_vector, *f.rows_without_regions] if c not in no_object]
    if not todo:
        return {"reembedded": 0, "reembed_failed": [], "reembed_failed_count": 0}
    # Held while their vectors are written: a delete of the last row meanwhile then purges
    # the new vector too, instead of leaving it behind.
    with svc.holding([c.milvus_id for c in todo]) as held:
        have = set(svc.stores.vectors.get(held)) if held else set()
        regions = svc.region_index()
        if regions is not None and held:
            have &= regions.owners_with_parts(held)  # a vector alone is not complete
        todo = [c for c in todo if c.milvus_id in set(held) - have]
        return _reembed(settings, todo, opts, address)


def _reembed(
    settings: Settings, todo: list[Content], opts: PoolOptions, address: str | None
) -> dict[str, Any]:
    from pipelines.dataflow import embed_contents

    if not todo:
        return {"reembedded": 0, "reembed_failed": [], "reembed_failed_count": 0}
    ensure_ray(address, settings)
    result = embed_contents(todo, settings, settings.stores.collection, opts)
    return {
        "reembedded": result["embedded"],
        "reembed_failed": result["failed"],
        "reembed_failed_count": result["failed_count"],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fix", action="store_true", help="delete old orphans, re-embed rows missing a vector"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        metavar="SECONDS",
        help="only orphans older than this are deleted (default 600)",
    )
    add_common_arguments(parser)
    add_pool_arguments(parser)


def command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    report = run(settings, args.fix, args.grace, pool_options_from_args(args), args.address)
    write_report(report, args.report)
    return 0


def main(argv: list[str] | None = None) -> int:
    return job_main("pipelines.reconcile", __doc__, add_arguments, command, argv)


if __name__ == "__main__":
    sys.exit(main())
