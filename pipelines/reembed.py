"""Re-embed every stored image with another model, runtime or precision, or with region
search's vectors, into a new collection.

    python -m pipelines.reembed --model efficientnet-lite0 [--runtime auto] [--precision bf16] \
        [--regions] [--collection NEW] [--switch-app image_search] [--report out.json]
    python -m pipelines.reembed --regions [--collection NEW] [--switch-app image_search]

--regions builds NEW with region vectors (a thumbnail view and R-MAC regions per image,
image_search/regions.py; --model defaults to the one in service): the way an existing
collection gains region search, since a collection keeps what it was built with.

1. bulk: every distinct content the metadata knows (objects are keyed by the rows) is fetched,
   decoded for the new model, embedded by an actor pool and upserted into NEW. Contents NEW
   already holds are skipped, so a stopped run resumes.
2. switch (with --switch-app): the running Serve application is redeployed with the new model
   and collection; pipelines.switch says why search never stops.
3. catch-up: rows written since step 1 began went through the old application (their vectors
   are in the old collection, or, during the switch, possibly from the old model): their
   contents are embedded again into NEW, overwriting, plus anything NEW still lacks.
The old collection is left as it was, for a rollback; config.yaml must then name the new model
and collection (the report says what to set), or a restart would bring the old ones back.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, get_args

from image_search.config import ModelSettings, Settings
from image_search.embedding import MODELS
from image_search.errors import ConfigError
from image_search.stores import MetadataStore, open_metadata, open_vectors, records_regions
from pipelines.dataflow import embed_in_parts
from pipelines.findings import PART_CONTENTS, Content, library_parts
from pipelines.options import PoolOptions, add_pool_arguments, pool_options_from_args
from pipelines.runtime import (
    add_common_arguments,
    ensure_ray,
    job_main,
    settings_from_args,
    write_report,
)

logger = logging.getLogger("pipelines.reembed")
PAGE = 500
# Row timestamps come from the database's writers, clocks of other hosts: look back a little.
CLOCK_SLACK = timedelta(seconds=30)


def target_settings(
    settings: Settings,
    model: str,
    precision: str,
    collection: str | None,
    runtime: str = "auto",
    regions: bool = False,
) -> Settings:
    data = settings.model_dump(mode="json")
    data["model"].update(name=model, runtime=runtime, precision=precision)
    # A new collection records whether it has region vectors from this (search.regions).
    data["search"]["regions"] = regions
    if not collection:
        collection = default_collection(settings, Settings.model_validate(data))
    data["stores"]["collection"] = collection
    new = Settings.model_validate(data)
    if new.stores.collection == settings.stores.collection:
        raise ConfigError("the new collection must differ from the one in service")
    return new


def default_collection(settings: Settings, new: Settings) -> str:
    """<old>__<model>_<runtime>_<precision>[_rmac], resolved: e.g.
    image_vectors__resnet50_onnx_fp32, or image_vectors__resnet50_onnx_fp32_rmac with regions."""
    tag = new.model.runtime_choice().tag + ("_rmac" if new.search.regions else "")
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{settings.stores.collection}__{new.model.name}_{tag}")


def contents_since(metadata: MetadataStore, since: datetime) -> list[Content]:
    """Distinct contents of rows created at or after `since` (newest first, paged by id)."""
    out: dict[str, Content] = {}
    offset = 0
    while True:
        page = metadata.page(offset, PAGE)
        for rec in page:
            if rec.created_at >= since:
                out.setdefault(rec.sha256, Content(rec.sha256, rec.milvus_id, rec.file_path))
        if len(page) < PAGE or page[-1].created_at < since:
            return list(out.values())
        offset += PAGE


def missing_in(
    new: Settings, metadata: MetadataStore, part_contents: int = PART_CONTENTS
) -> Iterator[list[Content]]:
    """The contents NEW lacks, a part of the id space at a time (pipelines.findings.scan's
    parts): what is held grows with a part, not with the library. Checks NEW at once."""
    target = open_vectors(new)
    target.ping()  # creates NEW bound to the new model id, or refuses one built by another
    if new.search.regions and not records_regions(target):
        raise ConfigError(f"collection {new.stores.collection!r} exists without region vectors: "
                          "name another --collection for --regions")  # fmt: skip

    def parts() -> Iterator[list[Content]]:
        for within in library_parts(metadata.count(), part_contents):
            have = set(target.ids(within))
            rows = metadata.iter_content(within)
            yield [Content(s, int(i), p) for s, i, p in rows if int(i) not in have]

    return parts()


def run(
    settings: Settings,
    model: str,
    precision: str,
    collection: str | None = None,
    switch_app: str | None = None,
    route_prefix: str | None = None,
    serve_config: str | None = "serve_config.yaml",
    opts: PoolOptions | None = None,
    runtime: str = "auto",
    regions: bool = False,
) -> dict[str, Any]:
    """Ray must be initialised (ensure_ray) on the cluster that runs the app to switch."""
    opts = opts or PoolOptions()
    new = target_settings(settings, model, precision, collection, runtime, regions)
    if switch_app:
        from pipelines.switch import app_details

        # Fail before the long part: the app must run on the cluster this job runs on.
        if app_details(switch_app) is None:
            raise ConfigError(f"no Serve application {switch_app!r} on this Ray cluster")
    metadata = open_metadata(settings)
    metadata.create_schema()
    started, began_at = time.monotonic(), datetime.now(UTC)
    report: dict[str, Any] = {
        "from": {"model_id": settings.model.model_id, "collection": settings.stores.collection},
        "to": {"model_id": new.model.model_id, "collection": new.stores.collection,
               "regions": regions},
    }  # fmt: skip
    todo = missing_in(new, metadata)
    logger.info("re-embedding what %s lacks with %s", new.stores.collection, new.model.model_id)
    report["bulk"] = embed_in_parts(todo, new, new.stores.collection, opts)
    if switch_app:
        from pipelines.switch import switch_app as do_switch

        report["switch"] = do_switch(switch_app, settings, new, route_prefix, serve_config)
        late = contents_since(metadata, began_at - CLOCK_SLACK)
        known = {c.sha256 for c in late}
        logger.info("catch-up: %d contents written since the bulk pass began", len(late))
        lacking = ([c for c in part if c.sha256 not in known] for part in missing_in(new, metadata))
        report["catch_up"] = embed_in_parts(
            chain([late], lacking), new, new.stores.collection, opts
        )
    report["config_to_set"] = {
        "model.name": new.model.name,
        "model.runtime": new.model.runtime,
        "model.precision": new.model.precision,
        "stores.collection": new.stores.collection,
        "search.regions": regions,
    }
    report["elapsed_s"] = round(time.monotonic() - started, 3)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = sorted(MODELS)
    runtimes = get_args(ModelSettings.model_fields["runtime"].annotation)
    precisions = get_args(ModelSettings.model_fields["precision"].annotation)
    parser.add_argument(
        "--model", default=None, choices=names, help="default: the one in service (config)"
    )
    parser.add_argument("--runtime", default="auto", choices=runtimes)
    parser.add_argument("--precision", default="auto", choices=precisions)
    parser.add_argument(
        "--regions",
        action="store_true",
        help="build the new collection with region search's vectors (README, Region search)",
    )
    parser.add_argument(
        "--collection",
        default=None,
        help="new collection (default: <old>__<model>_<runtime>_<precision>, resolved)",
    )
    parser.add_argument(
        "--switch-app", default=None, metavar="APP", help="Serve application to switch when done"
    )
    parser.add_argument(
        "--route-prefix", default=None, help="its route prefix (default: the one it has)"
    )
    parser.add_argument(
        "--serve-config", default="serve_config.yaml", help="deployment options to fall back on"
    )
    add_common_arguments(parser)
    add_pool_arguments(parser)


def command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    ensure_ray(args.address, settings)
    report = run(
        settings,
        args.model or settings.model.name,
        args.precision,
        args.collection,
        args.switch_app,
        args.route_prefix,
        args.serve_config,
        pool_options_from_args(args),
        args.runtime,
        args.regions,
    )
    write_report(report, args.report)
    failed = sum(report.get(k, {}).get("failed_count", 0) for k in ("bulk", "catch_up"))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return job_main("pipelines.reembed", __doc__, add_arguments, command, argv)


if __name__ == "__main__":
    sys.exit(main())
