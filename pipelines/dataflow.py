"""Ray Data graphs: source rows -> CPU tasks -> embed actor pool -> write actor pool.

One builder for the backfill (files -> rows) and one for stored content (objects -> vectors
of another model, or of the current model for rows whose vector is missing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from deployments.config import Settings, settings_to_json
from pipelines.batches import Batch, Row, to_rows
from pipelines.options import PoolOptions

# glibc malloc maps and unmaps every activation buffer over 32 MB; torch eager then spends a
# large share of its time in the kernel (MACHINE_FACTS: 22 -> 72 img/s at batch 32). Ray Data
# calls the actor off the main thread, whose malloc arena ignores those two settings (measured
# here: 35.6 ms/image in a thread vs 23.0 on the main one) unless every thread shares the main
# arena. glibc reads these at process start, so they go into the embed actors' environment.
EMBED_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "MALLOC_ARENA_MAX": "1",
}
ROWS_PER_BLOCK = 32
MAX_BLOCKS = 10_000


def _source(rows: list[Row]) -> Any:
    import ray.data

    # Small blocks let the CPU stage start streaming into the embedder at once.
    blocks = max(1, min(MAX_BLOCKS, math.ceil(len(rows) / ROWS_PER_BLOCK)))
    return ray.data.from_items(rows, override_num_blocks=blocks)


def _embed_and_write(
    ds: Any, model_json: str, write_cls: type, write_kwargs: dict[str, Any], opts: PoolOptions
) -> Any:
    from ray.data import ActorPoolStrategy

    from pipelines.stages import EmbedStage

    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={"settings_json": model_json, "batch_size": opts.batch_size},
        # All actors from the start (loading the model is the slow part of starting up); Ray
        # Data may still shrink the pool when the stage starves.
        compute=ActorPoolStrategy(
            min_size=1, max_size=opts.embed_actors, initial_size=opts.embed_actors
        ),
        batch_size=opts.batch_size,
        batch_format="numpy",
        num_cpus=opts.embed_cpus,
        runtime_env={"env_vars": EMBED_ENV},
    )
    return ds.map_batches(
        write_cls,
        fn_constructor_kwargs=write_kwargs,
        compute=ActorPoolStrategy(min_size=1, max_size=opts.write_actors),
        batch_size=opts.batch_size,
        batch_format="numpy",
        num_cpus=opts.write_cpus,
    )


def backfill_dataset(rows: list[Row], settings: Settings, opts: PoolOptions) -> Any:
    from pipelines.prepare import prepare_batch
    from pipelines.stages import WriteStage

    sj = settings_to_json(settings)
    ds = _decode_stage(rows, prepare_batch, sj, opts)
    return _embed_and_write(ds, sj, WriteStage, {"settings_json": sj}, opts)


def _decode_stage(rows: list[Row], fn: Any, settings_json: str, opts: PoolOptions) -> Any:
    """The CPU-task stage both datasets start with: read, hash and decode rows in batches."""
    return _source(rows).map_batches(
        fn,
        fn_kwargs={"settings_json": settings_json},
        batch_size=min(opts.batch_size, ROWS_PER_BLOCK),
        batch_format="numpy",
        num_cpus=opts.decode_cpus,
    )


def content_dataset(
    rows: list[Row], model_settings: Settings, collection: str, opts: PoolOptions
) -> Any:
    """rows: sha256, milvus_id, file_path of stored content -> upserted into `collection`."""
    from pipelines.content import fetch_decode_batch
    from pipelines.stages import UpsertStage

    sj = settings_to_json(model_settings)
    ds = _decode_stage(rows, fetch_decode_batch, sj, opts)
    kwargs = {"settings_json": sj, "collection": collection}
    return _embed_and_write(ds, sj, UpsertStage, kwargs, opts)


def stream_rows(ds: Any, on_rows: Callable[[list[Row]], None]) -> None:
    """Run the graph (streaming) and hand each output block's rows to `on_rows` as it arrives."""
    batches: Iterator[Batch] = ds.iter_batches(batch_size=None, batch_format="numpy")
    for batch in batches:
        on_rows(to_rows(batch))
