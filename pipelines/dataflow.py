"""Ray Data graphs: source rows -> CPU tasks -> embed actor pool -> write actor pool.

One builder for the backfill (files -> rows) and one for stored content (objects -> vectors
of another model, or of the current model for rows whose vector is missing), which
`embed_contents` runs for the re-embed and reconcile jobs (`embed_in_parts` for a library
read a part at a time). Where the target collection has region vectors
(image_search.stores.records_regions), every stage also carries region search's columns:
views from the CPU stage, region vectors from the embedder.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from image_search.config import Settings, settings_to_json
from image_search.embedding import ALLOCATOR_ENV
from image_search.stores import open_regions, open_vectors, records_regions
from pipelines.batches import Batch, Row, to_rows
from pipelines.findings import PART_CONTENTS, Content
from pipelines.options import PoolOptions
from pipelines.runtime import capped
from pipelines.stages import with_retries

logger = logging.getLogger(__name__)
ROWS_PER_BLOCK = 32
MAX_BLOCKS = 10_000


def _source(rows: list[Row]) -> Any:
    import ray.data

    # Small blocks let the CPU stage start streaming into the embedder at once.
    blocks = max(1, min(MAX_BLOCKS, math.ceil(len(rows) / ROWS_PER_BLOCK)))
    return ray.data.from_items(rows, override_num_blocks=blocks)


def _embed_and_write(
    ds: Any,
    model_json: str,
    write_cls: type,
    write_kwargs: dict[str, Any],
    opts: PoolOptions,
    regions: bool,
) -> Any:
    from ray.data import ActorPoolStrategy

    from pipelines.stages import EmbedStage  # imports torch: only where the graph is built

    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={
            "settings_json": model_json,
            "batch_size": opts.batch_size,
            "regions": regions,
        },
        # All actors from the start (loading the model is the slow part of starting up); Ray
        # Data may still shrink the pool when the stage starves.
        compute=ActorPoolStrategy(
            min_size=1, max_size=opts.embed_actors, initial_size=opts.embed_actors
        ),
        batch_size=opts.batch_size,
        batch_format="numpy",
        num_cpus=opts.embed_cpus,
        runtime_env={"env_vars": ALLOCATOR_ENV},
    )
    return ds.map_batches(
        write_cls,
        fn_constructor_kwargs=write_kwargs,
        compute=ActorPoolStrategy(min_size=1, max_size=opts.write_actors),
        batch_size=opts.batch_size,
        batch_format="numpy",
        num_cpus=opts.write_cpus,
    )


def has_regions(settings: Settings, collection: str) -> bool:
    """Whether `collection` was built with region vectors (then every write brings them)."""
    return records_regions(open_vectors(settings, collection))


def backfill_dataset(
    rows: list[Row], settings: Settings, opts: PoolOptions, regions: bool = False
) -> Any:
    from pipelines.reading import read_batch
    from pipelines.stages import WriteStage

    sj = settings_to_json(settings)
    ds = _decode_stage(rows, read_batch, sj, opts, regions)
    return _embed_and_write(ds, sj, WriteStage, {"settings_json": sj}, opts, regions)


def _decode_stage(
    rows: list[Row], fn: Any, settings_json: str, opts: PoolOptions, regions: bool
) -> Any:
    """The CPU-task stage both datasets start with: read, hash and decode rows in batches."""
    return _source(rows).map_batches(
        fn,
        fn_kwargs={"settings_json": settings_json, "regions": regions},
        batch_size=min(opts.batch_size, ROWS_PER_BLOCK),
        batch_format="numpy",
        num_cpus=opts.decode_cpus,
    )


def content_dataset(
    rows: list[Row],
    model_settings: Settings,
    collection: str,
    opts: PoolOptions,
    regions: bool = False,
) -> Any:
    """rows: sha256, milvus_id, file_path of stored content -> upserted into `collection`."""
    from pipelines.content import fetch_decode_batch
    from pipelines.stages import UpsertStage

    sj = settings_to_json(model_settings)
    ds = _decode_stage(rows, fetch_decode_batch, sj, opts, regions)
    kwargs = {"settings_json": sj, "collection": collection, "regions": regions}
    return _embed_and_write(ds, sj, UpsertStage, kwargs, opts, regions)


def stream_rows(ds: Any, on_rows: Callable[[list[Row]], None]) -> None:
    """Run the graph (streaming) and hand each output block's rows to `on_rows` as it arrives."""
    batches: Iterator[Batch] = ds.iter_batches(batch_size=None, batch_format="numpy")
    for batch in batches:
        on_rows(to_rows(batch))


def embed_contents(
    contents: Sequence[Content], model_settings: Settings, collection: str, opts: PoolOptions
) -> dict[str, Any]:
    """Embed stored contents with model_settings.model into `collection` (re-embed, reconcile),
    with their region vectors where the collection has them."""
    if not contents:
        return {"embedded": 0, "failed": [], "failed_count": 0}
    regions = has_regions(model_settings, collection)
    rows = [
        {"sha256": c.sha256, "milvus_id": c.milvus_id, "file_path": c.file_path} for c in contents
    ]
    embedded, failed = 0, []

    def on_rows(out: list[dict[str, Any]]) -> None:
        nonlocal embedded
        for row in out:
            if row["status"] == "embedded":
                embedded += 1
            else:
                failed.append({"file_path": row["file_path"], "reason": row["reason"]})

    stream_rows(content_dataset(rows, model_settings, collection, opts, regions), on_rows)
    if regions:
        with_retries("flush regions", open_regions(model_settings, collection).flush)
    with_retries("flush", open_vectors(model_settings, collection).flush)
    return {"embedded": embedded, "failed": capped(failed), "failed_count": len(failed)}


def embed_in_parts(
    parts: Iterable[list[Content]],
    model_settings: Settings,
    collection: str,
    opts: PoolOptions,
    run_size: int = PART_CONTENTS,
) -> dict[str, Any]:
    """embed_contents over a library read a part at a time, the parts joined into runs of at
    least `run_size` contents: one Ray Data graph per run (starting the model actors is its
    fixed cost), one run's contents in memory, not the library's."""
    total: dict[str, Any] = {"embedded": 0, "failed": [], "failed_count": 0}
    run: list[Content] = []

    def embed(contents: list[Content]) -> None:
        logger.info("embedding %d contents into %s", len(contents), collection)
        result = embed_contents(contents, model_settings, collection, opts)
        total["embedded"] += result["embedded"]
        total["failed"] = capped(total["failed"] + result["failed"])
        total["failed_count"] += result["failed_count"]

    for part in parts:
        run += part
        if len(run) >= run_size:
            embed(run)
            run = []
    if run:
        embed(run)
    return total
