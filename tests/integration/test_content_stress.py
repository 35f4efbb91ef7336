"""Separate OS processes write, delete, wipe and reconcile the same content at once.

Three processes (as two Indexer replicas and a job would be) share one SQLite file (WAL), one
object folder and one Milvus Lite server, each with its own IndexService. They ingest
overlapping content (the same bytes under several meta_uuids, known content reusing its vector),
delete rows, make thumbnails, and one of them also wipes everything and runs `reconcile --fix`
with no grace period. When they stop, every row has its object and vector, no object or vector
is without a row, the content table agrees with the rows, and reconcile finds nothing.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from image_search.config import Settings, StoreSettings, settings_from_json, settings_to_json
from image_search.embedding import model_card
from image_search.errors import Conflict, NotFound, SearchEngineError, StoreUnavailable
from image_search.imaging import content_info
from image_search.indexing import IndexService, IngestItem
from image_search.records import ImageRecord, new_image, thumbnail_key_for
from image_search.stores.lite_server import stop_lite_server
from tests.servers import free_port

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

RUN_S = 20.0
CONTENTS = 6  # few contents, many meta_uuids: rows share content all the time
UUIDS = 14


def image_bytes(content: int) -> bytes:
    rng = np.random.default_rng(content)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def vector(content: int, dim: int) -> np.ndarray:
    v = np.random.default_rng(1000 + content).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _ingest(svc: IndexService, rng: random.Random, dim: int) -> list[str]:
    items = []
    for _ in range(rng.randint(1, 3)):
        content = rng.randrange(CONTENTS)
        data = image_bytes(content)
        new = new_image(content_info(data), f"u{rng.randrange(UUIDS)}", f"{content}.png", 24, 24)
        # Planned as known content (no vector sent) when rows have it, as the planner would.
        known = rng.random() < 0.5 and svc.stores.metadata.references(new.sha256) > 0
        items.append(IngestItem(new, data, None if known else vector(content, dim)))
    return [_outcome(r) for r in svc.ingest_many(items)]


def _outcome(result: ImageRecord | SearchEngineError) -> str:
    if isinstance(result, ImageRecord):
        return "indexed"
    if isinstance(result, Conflict):
        return "conflict"
    if isinstance(result, StoreUnavailable):
        return "retry"  # a 503: content deleted or wiped while in flight
    raise result


def worker(settings_json: str, seed: int, chaos: bool, stop_at: float) -> dict[str, int]:
    """One process: its own IndexService on the shared stores."""
    logging.basicConfig(level=logging.ERROR)
    from pipelines import reconcile

    real_reembed = reconcile._reembed

    def no_reembed(*args: Any) -> dict[str, object]:
        # No row may ever lack its vector; a re-embed would mean the protocol failed. (The
        # scan itself is not atomic: a row committed between its two reads looks vectorless
        # until reconcile re-checks under a hold, which leaves nothing to do.)
        if args[1]:
            raise AssertionError(f"reconcile found rows without a vector: {args[1]}")
        return real_reembed(*args)

    reconcile._reembed = no_reembed  # type: ignore[assignment]
    settings = settings_from_json(settings_json)
    svc = IndexService.from_settings(settings)
    dim = model_card(settings.model.name).dim
    rng, counts = random.Random(seed), Counter[str]()
    next_chaos = time.time() + 2.0
    while time.time() < stop_at:
        roll = rng.random()
        try:
            if roll < 0.55:
                counts.update(_ingest(svc, rng, dim))
            elif roll < 0.85:
                svc.delete(f"u{rng.randrange(UUIDS)}")
                counts["deleted"] += 1
            else:
                svc.thumbnail(f"u{rng.randrange(UUIDS)}")
                counts["thumbnail"] += 1
        except NotFound:
            counts["not_found"] += 1
        except StoreUnavailable:
            # A store timing out under this load (a 503 to a client): what was half done must
            # stay invisible and be cleaned up, which the checks at the end verify.
            counts["unavailable"] += 1
            time.sleep(0.2)
        if chaos and time.time() > next_chaos:
            if rng.random() < 0.5:
                svc.delete_all()
                counts["delete_all"] += 1
            else:
                reconcile.run(settings, fix=True, grace_s=0)
                counts["reconcile"] += 1
            next_chaos = time.time() + rng.uniform(1.0, 3.0)
    return dict(counts)


def test_processes_racing_on_shared_content_leave_stores_consistent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings(stores=StoreSettings(
        metadata_uri=f"sqlite:///{data}/meta.db", objects_uri=f"file://{data}/objects",
        vectors_uri=str(data / "vectors.db"), lite_port=free_port(), collection="stress",
    ))  # fmt: skip
    try:
        race_then_check(settings)
    finally:
        stop_lite_server(settings.stores.vectors_uri)


def race_then_check(settings: Settings) -> Counter[str]:
    """Three processes race on settings' stores (which must be this test's alone: delete-all
    wipes them), then every store must agree with the rows. The operation counts."""
    from pipelines import reconcile

    svc = IndexService.from_settings(settings)
    svc.ensure_stores()  # schema and collection once, before the workers race
    ctx = multiprocessing.get_context("spawn")
    stop_at = time.time() + RUN_S + 10.0  # the spawned interpreters take seconds to start
    with ctx.Pool(3) as pool:
        runs = [pool.apply_async(worker, (settings_to_json(settings), seed, seed == 0,
                                          stop_at)) for seed in range(3)]  # fmt: skip
        totals = sum((Counter(r.get(timeout=RUN_S + 60)) for r in runs), Counter[str]())
    logger.info("content race on %s: %s", settings.stores.metadata_uri.split(":")[0],
                dict(totals))  # fmt: skip
    # The run did race: every operation happened, several times.
    assert totals["indexed"] > 30 and totals["deleted"] > 30, totals
    assert totals["delete_all"] + totals["reconcile"] >= 3, totals

    st = svc.stores
    rows = [r for off in range(0, 10_000, 500) for r in st.metadata.page(off, 500)]
    keys, vector_ids = set(st.objects.keys()), set(st.vectors.ids())
    for rec in rows:
        assert rec.file_path in keys, f"row {rec.meta_uuid} lost its object ({totals})"
        assert rec.milvus_id in vector_ids, f"row {rec.meta_uuid} lost its vector ({totals})"
    shas = {r.sha256 for r in rows}
    expected_keys = {r.file_path for r in rows} | {
        thumbnail_key_for(s, settings.server.thumbnail_size) for s in shas
    }
    assert keys <= expected_keys, f"objects without a row: {keys - expected_keys}"
    assert vector_ids == {r.milvus_id for r in rows}, "vectors without a row"
    assert st.metadata.ref_drift(lease_s=0) == []  # no pin or purge left, refs exact
    report = reconcile.run(settings)
    assert report["consistent"] is True, report
    return totals
