"""Duplicate review of a library of any size: groups of copies and near-duplicates, the copy
worth keeping first, written as a JSON and a CSV report.

    python -m pipelines.duplicates --report /data/duplicates.json [--csv /data/duplicates.csv]
                                   [--threshold 0.5] [--neighbors 32] [--block 256]

The same grouping as GET /duplicates (image_search.duplicates), without its size cap:
1. the driver reads the library's content ids in keyset pages (16 bytes per content);
2. Ray Data range-searches them, a block of query vectors per call, on an actor pool that holds
   one vector client per actor, and streams the links back;
3. the driver unions the links as they arrive (8 bytes per content; a link is never stored);
4. groups are ranked (pass 1: size and best image's id, two numbers per group) and written in
   that order (pass 2), their rows and vectors fetched again a chunk of groups at a time.
Memory on the driver follows the number of images, never the number of pairs. A library that
changes while the job runs gets each group as it was when that group was written.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from image_search.config import Settings, settings_from_json, settings_to_json
from image_search.duplicates import (
    LOOKUP_CHUNK,
    Group,
    Library,
    UnionFind,
    best_key,
    check_threshold,
    describe,
    grouped,
    link_distance,
    read_library,
    records_of,
    rows_of,
    search_links,
    sort_key,
    vectors_of,
)
from image_search.errors import BadRequest
from image_search.records import ImageRecord
from image_search.stores import Stores, open_stores, open_vectors
from pipelines.runtime import add_common_arguments, ensure_ray, job_main, settings_from_args
from pipelines.stages import with_retries

logger = logging.getLogger("pipelines.duplicates")
# Ray Data blocks: enough for every actor to have work, few enough for the scheduler.
MAX_BLOCKS = 10_000
CSV_COLUMNS = ("group", "rank", "keep", "match", "distance", "meta_uuid", "id", "file_name",
               "file_path", "width", "height", "size_bytes", "created_at", "sha256")  # fmt: skip


class RangeSearchStage:
    """content ids -> their links (a, b, distance): one range search per batch of ids."""

    def __init__(self, settings_json: str, radius: float, neighbors: int) -> None:
        self.vectors = open_vectors(settings_from_json(settings_json))
        self.vectors.ping()  # ConfigError on a model/collection mismatch
        self.radius = radius
        self.neighbors = neighbors

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [int(i) for i in batch["data"]]
        links = with_retries(
            "range search", search_links, self.vectors, ids, self.radius, self.neighbors
        )
        return {"a": links.a, "b": links.b, "d": links.d}


def link_batches(
    settings: Settings, library: Library, radius: float, opts: argparse.Namespace
) -> Iterator[dict[str, np.ndarray]]:
    """Every content's links, streamed from Ray Data as each batch of searches ends."""
    import ray.data
    from ray.data import ActorPoolStrategy

    blocks = max(1, min(MAX_BLOCKS, math.ceil(len(library.ids) / opts.block)))
    # One block per slice of the ids (column "data"): the ids leave the driver once.
    ds = ray.data.from_numpy(np.array_split(library.ids, blocks)).map_batches(
        RangeSearchStage,
        fn_constructor_kwargs={
            "settings_json": settings_to_json(settings),
            "radius": radius,
            "neighbors": opts.neighbors,
        },
        compute=ActorPoolStrategy(min_size=1, max_size=opts.search_actors),
        batch_size=opts.block,
        batch_format="numpy",
        num_cpus=opts.search_cpus,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def union_links(
    library: Library, batches: Iterator[dict[str, np.ndarray]]
) -> tuple[UnionFind, int]:
    """Union every link as it arrives; links to contents outside the library join nothing."""
    uf = UnionFind(len(library.ids))
    n = 0
    for batch in batches:
        pa, fa = library.index_of(batch["a"])
        pb, fb = library.index_of(batch["b"])
        ok = fa & fb
        uf.union_all(pa[ok], pb[ok])
        n += int(ok.sum())
    return uf, n


def chunked_groups(parts: list[np.ndarray], order: list[int]) -> Iterator[list[int]]:
    """Indexes of `parts` in `order`, a chunk holding about LOOKUP_CHUNK contents at a time."""
    chunk: list[int] = []
    size = 0
    for i in order:
        chunk.append(i)
        size += len(parts[i])
        if size >= LOOKUP_CHUNK:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def rank(stores: Stores, parts: list[np.ndarray]) -> list[int]:
    """Pass 1: the order of the groups (largest first, then best image's id)."""
    keys: list[tuple[tuple[int, int], int]] = []
    for chunk in chunked_groups(parts, list(range(len(parts)))):
        records = records_of(stores.metadata, np.concatenate([parts[i] for i in chunk]))
        for i in chunk:
            rows = rows_of(parts[i], records)
            if len(rows) >= 2:
                keys.append((sort_key(len(rows), min(rows, key=best_key)), i))
    keys.sort()
    return [i for _, i in keys]


def record_fields(rec: ImageRecord) -> dict[str, Any]:
    return {"meta_uuid": rec.meta_uuid, "id": rec.id, "file_name": rec.file_name,
            "file_path": rec.file_path, "sha256": rec.sha256, "milvus_id": rec.milvus_id,
            "width": rec.width, "height": rec.height, "size_bytes": rec.size_bytes,
            "mime": rec.mime, "created_at": rec.created_at.isoformat()}  # fmt: skip


class ReportWriter:
    """The JSON report (groups streamed into it, the summary last) and the CSV, one row per
    member: neither is ever held whole."""

    def __init__(self, json_out: TextIO, csv_out: TextIO, head: dict[str, Any]) -> None:
        self.json_out = json_out
        self.csv = csv.writer(csv_out)
        self.csv.writerow(CSV_COLUMNS)
        self.groups = 0
        self.images = 0
        # {<head's keys>, "groups": [<one line per group>], "summary": {...}}
        json_out.write("{" + json.dumps(head, sort_keys=True)[1:-1] + ', "groups": [')

    def group(self, group: Group) -> None:
        self.groups += 1
        self.images += group.size
        members = [{**record_fields(m.record), **m.fields()} for m in group.members]
        body = {"group": self.groups, **group.fields(), "members": members}
        self.json_out.write(("\n" if self.groups == 1 else ",\n") + json.dumps(body))
        for rank_, m in enumerate(members, start=1):
            self.csv.writerow([self.groups, rank_, m["keep"], m["match"], m["distance"],
                               *(m[c] for c in CSV_COLUMNS[5:])])  # fmt: skip

    def close(self, summary: dict[str, Any]) -> None:
        self.json_out.write('\n], "summary": ' + json.dumps(summary, sort_keys=True) + "}\n")


def write_groups(
    stores: Stores, parts: list[np.ndarray], order: list[int], out: ReportWriter
) -> None:
    """Pass 2: each group described (distances to its best image) and written, in order."""
    for chunk in chunked_groups(parts, order):
        ids = np.concatenate([parts[i] for i in chunk])
        records = records_of(stores.metadata, ids)
        vectors = vectors_of(stores.vectors, ids)
        for i in chunk:
            rows = rows_of(parts[i], records)
            if len(rows) >= 2:  # rows deleted since pass 1 may leave none to compare
                out.group(describe(rows, vectors))


def run(
    settings: Settings,
    report_path: str,
    csv_path: str,
    threshold: float,
    opts: argparse.Namespace,
    address: str | None = None,
) -> dict[str, Any]:
    started = time.monotonic()
    stores = open_stores(settings)
    library = read_library(stores.metadata)
    radius = link_distance(threshold)
    logger.info("library: %d images, %d contents; searching within %.4f, %d neighbours each",
                library.images, len(library.ids), radius, opts.neighbors)  # fmt: skip
    if len(library.ids):
        ensure_ray(address)
        uf, links = union_links(library, link_batches(settings, library, radius, opts))
    else:
        uf, links = UnionFind(0), 0
    searched = time.monotonic()
    parts = grouped(library, uf.labels())
    del uf  # the labels are all that is needed now
    order = rank(stores, parts)
    head = {"threshold": threshold, "neighbors": opts.neighbors,
            "collection": settings.stores.collection}  # fmt: skip
    for path in (report_path, csv_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(report_path, "w", encoding="utf-8") as js,
        open(csv_path, "w", encoding="utf-8", newline="") as cs,
    ):
        writer = ReportWriter(js, cs, head)
        write_groups(stores, parts, order, writer)
        summary = {
            **head, "images": library.images, "contents": len(library.ids), "links": links,
            "groups": writer.groups, "images_in_groups": writer.images,
            "search_s": round(searched - started, 3),
            "elapsed_s": round(time.monotonic() - started, 3),
            "report": str(Path(report_path).resolve()), "csv": str(Path(csv_path).resolve()),
        }  # fmt: skip
        writer.close(summary)
    logger.info("duplicates done: %d groups holding %d of %d images (threshold %.4f), %.1f s",
                summary["groups"], summary["images_in_groups"], library.images, threshold,
                summary["elapsed_s"])  # fmt: skip
    logger.info("summary: %s", json.dumps(summary, sort_keys=True))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="max distance linking two images (default duplicates.threshold)",
    )
    parser.add_argument(
        "--csv", default=None, help="the CSV report (default: the --report path with .csv)"
    )
    parser.add_argument(
        "--neighbors",
        type=int,
        default=None,
        help="neighbours kept per image (default duplicates.neighbors)",
    )
    parser.add_argument(
        "--block",
        type=int,
        default=None,
        help="query vectors per range search (default duplicates.search_batch)",
    )
    parser.add_argument(
        "--search-actors",
        type=int,
        default=1,
        help="range-search actors, each with a vector client (default 1)",
    )
    parser.add_argument("--search-cpus", type=float, default=0.25,
                        help="CPUs each search actor asks Ray for (default 0.25; the vector "
                             "store does the work)")  # fmt: skip
    add_common_arguments(parser)


def command(args: argparse.Namespace) -> int:
    if not args.report:
        raise SystemExit("--report PATH.json is required: the groups are written there")
    settings = settings_from_args(args)
    opts = settings.duplicates
    args.neighbors = opts.neighbors if args.neighbors is None else args.neighbors
    args.block = opts.search_batch if args.block is None else args.block
    if args.neighbors < 1 or args.block < 1 or args.search_actors < 1 or args.search_cpus < 0:
        raise SystemExit("--neighbors, --block and --search-actors must be at least 1, "
                         "--search-cpus at least 0")  # fmt: skip
    try:
        value = opts.threshold if args.threshold is None else args.threshold
        threshold = check_threshold(value, opts.max_threshold)
    except BadRequest as exc:
        raise SystemExit(exc.message) from exc
    csv_path = args.csv or str(Path(args.report).with_suffix(".csv"))
    run(settings, args.report, csv_path, threshold, args, args.address)
    return 0


def main(argv: list[str] | None = None) -> int:
    return job_main("pipelines.duplicates", __doc__, add_arguments, command, argv)


if __name__ == "__main__":
    # Through the module's own name, so Ray workers import RangeSearchStage from it rather
    # than receiving a copy of this __main__.
    from pipelines import duplicates

    sys.exit(duplicates.main())
