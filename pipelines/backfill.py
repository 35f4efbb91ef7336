"""Bulk backfill as a Ray Data job: index a folder, an S3 prefix or a manifest, idempotently.

    ray job submit --working-dir . -- python -m pipelines.backfill --source SRC [--report R]

read + hash + plan + decode (CPU tasks) -> embed (actor pool, model loaded once per actor)
-> write (actor pool; IndexService.ingest_many: object -> vector -> metadata row). Into a
collection built with region vectors (search.regions), each new image's region vectors are
made on the way, by the service's code, and written with its vector.
Known content is found before the embedder, so a rerun embeds nothing twice; a job stopped
midway leaves at most unreferenced objects/vectors, which the rerun adopts (same keys, same
ids) or `pipelines.reconcile` removes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from image_search.config import Settings
from image_search.errors import StoreUnavailable
from image_search.indexing import IndexService
from image_search.stores import open_regions, open_stores, open_vectors
from pipelines.batches import Row
from pipelines.options import PoolOptions, add_pool_arguments, pool_options_from_args
from pipelines.runtime import (
    add_common_arguments,
    capped,
    ensure_ray,
    job_main,
    settings_from_args,
    write_report,
)
from pipelines.sources import list_source
from pipelines.stages import with_retries

logger = logging.getLogger("pipelines.backfill")


@dataclass
class Summary:
    """Outcome counts and the rows worth listing (skipped, conflicts, failures)."""

    counts: Counter[str] = field(default_factory=Counter)
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    skipped: list[dict[str, str]] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    # Start-up (listing, actors loading the model) shows as the wait for the first results;
    # the rate after them is what a long backfill runs at.
    first_at: float | None = None
    first_rows: int = 0
    last_at: float | None = None
    streamed: int = 0

    def add_batch(self, rows: list[Row]) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at, self.first_rows = now, len(rows)
        self.last_at = now
        self.streamed += len(rows)
        for row in rows:
            self.add(row)

    def add(self, row: Row) -> None:
        status = str(row["status"])
        self.counts[status] += 1
        entry = {"uri": str(row["uri"]), "reason": str(row["reason"])}
        if status == "skipped":
            self.skipped_by_reason[entry["reason"].split(":", 1)[0]] += 1
            self.skipped.append(entry)
        elif status == "conflict":
            self.conflicts.append({**entry, "meta_uuid": str(row["meta_uuid"])})
        elif status == "failed":
            self.failed.append(entry)

    def report(self, seen: int, ignored: int, tagged: int, started: float) -> dict[str, Any]:
        c = self.counts
        elapsed = time.monotonic() - started
        first = None if self.first_at is None else round(self.first_at - started, 3)
        steady = None
        if self.first_at is not None and self.last_at is not None and self.last_at > self.first_at:
            steady = round((self.streamed - self.first_rows) / (self.last_at - self.first_at), 2)
        return {
            "seen": seen,
            "indexed": c["indexed"],
            "duplicates": c["duplicate"],
            "conflicts": c["conflict"],
            "skipped": c["skipped"],
            "failed": c["failed"],
            "ignored_not_image_extension": ignored,
            "skipped_by_reason": dict(self.skipped_by_reason),
            "skipped_files": capped(self.skipped),
            "conflict_files": capped(self.conflicts),
            "failed_files": capped(self.failed),
            "tagged": tagged,
            "elapsed_s": round(elapsed, 3),
            "first_result_s": first,
            "after_first_result_images_per_s": steady,
            "images_per_s": round(seen / elapsed, 2) if elapsed > 0 else 0.0,
            "indexed_per_s": round(c["indexed"] / elapsed, 2) if elapsed > 0 else 0.0,
        }


def ensure_stores(settings: Settings) -> bool:
    """Create schema and collection once, in the driver, before any actor races to do it;
    whether the collection has region vectors (then the job makes them too).

    Also fails fast (ConfigError) when the collection belongs to another model.
    """
    svc = IndexService(open_stores(settings))
    svc.ensure_stores()
    return svc.region_index() is not None


def flush_vectors(settings: Settings, regions: bool = False) -> bool:
    """Flush the vectors written; False (logged) when the index would not answer.

    Milvus searches unflushed rows by brute force, so a flushed index is faster to search, but
    the rows are written either way (and the service flushes by itself): not worth failing for.
    """
    try:
        if regions:
            with_retries("flush regions", open_regions(settings).flush)
        with_retries("flush", open_vectors(settings).flush)
    except StoreUnavailable as exc:
        logger.warning("final flush failed, searches stay correct but slower: %s", exc.message)
        return False
    return True


def run(settings: Settings, source: str, opts: PoolOptions | None = None) -> dict[str, Any]:
    """Index `source` into the stores of `settings`; Ray must be initialised (ensure_ray)."""
    from pipelines.dataflow import backfill_dataset, stream_rows

    opts = opts or PoolOptions()
    started = time.monotonic()
    listing = list_source(source, settings)
    tagged = sum(1 for it in listing.items if it.tags)
    logger.info("backfill of %s: %d files to read (%d ignored, %d rejected entries)",
                source, len(listing.items), listing.ignored, len(listing.rejected))  # fmt: skip
    summary = Summary()
    flushed, regions = True, False
    for entry in listing.rejected:
        summary.add({**entry, "status": "skipped", "meta_uuid": ""})
    if listing.items:
        regions = ensure_stores(settings)
        ds = backfill_dataset([it.row() for it in listing.items], settings, opts, regions)
        stream_rows(ds, summary.add_batch)
        flushed = flush_vectors(settings, regions)
    seen = len(listing.items) + len(listing.rejected)
    report = summary.report(seen, listing.ignored, tagged, started)
    report["source"] = source
    report["vectors_flushed"] = flushed
    report["region_vectors"] = regions
    logger.info(
        "backfill done: seen %d, indexed %d, duplicates %d, conflicts %d, skipped %d, "
        "failed %d, %.1f images/s",
        report["seen"], report["indexed"], report["duplicates"], report["conflicts"],
        report["skipped"], report["failed"], report["images_per_s"],
    )  # fmt: skip
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        required=True,
        help="folder (recursive), s3://bucket/prefix, or a manifest .csv/.jsonl "
        "(columns: path or S3 URI, optional meta_uuid, optional tags)",
    )
    add_common_arguments(parser)
    add_pool_arguments(parser)


def command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    ensure_ray(args.address, settings)
    report = run(settings, args.source, pool_options_from_args(args))
    write_report(report, args.report)
    # Bad files do not fail the job; store failures do (a rerun picks those rows up).
    return 1 if report["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    return job_main("pipelines.backfill", __doc__, add_arguments, command, argv)


if __name__ == "__main__":
    sys.exit(main())
