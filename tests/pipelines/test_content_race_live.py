"""Two Indexer replicas and a backfill job write, delete and wipe the same content at once.

The HTTP side uploads the job's own photos (the same bytes, under other meta_uuids and under the
job's default ones), deletes rows and wipes everything once, while a backfill job indexes the
folder through its own writers. When all stops, every listed row's bytes and vector are there,
and reconcile (no grace period) finds nothing to report.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines import backfill, reconcile
from tests.conftest import AppFactory
from tests.pipelines.conftest import (
    SMALL,
    ZERO_CPU,
    make_photo_dir,
    settings_for,
    store_overrides,
)

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)
ROUNDS = 3


@pytest.fixture
def race_app(
    make_app: AppFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, Any]]]:
    from image_search.stores.lite_server import ensure_lite_server

    data = tmp_path_factory.mktemp("race")
    overrides = store_overrides(data)
    ensure_lite_server(data / "vectors.db", int(overrides["stores.lite_port"]))
    options = {**ZERO_CPU, "Indexer": {**ZERO_CPU["Indexer"], "num_replicas": 2}}
    url = make_app("content_race", overrides=overrides, extra_options=options)
    try:
        yield url, overrides
    finally:
        make_app.delete("content_race")


def test_replicas_and_a_job_never_leave_a_row_without_its_data(
    ray_cluster: dict[str, str],
    race_app: tuple[str, dict[str, Any]],
    photos: dict[str, bytes],
    tmp_path: Path,
) -> None:
    url, overrides = race_app
    settings = settings_for(overrides)
    folder = make_photo_dir(tmp_path / "photos", photos, 12, bad=False)
    files = list(folder.good.values())
    codes: Counter[int] = Counter()
    wiped = threading.Event()
    rng = random.Random(7)

    def http_side(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as api:
            for n in range(ROUNDS * len(files)):
                data = files[(n + worker) % len(files)]
                form = {"meta_uuid": f"w{worker}-{n % 5}"} if n % 2 else {}
                up = api.post("/meta/image/file", files={"file": ("x.jpg", data)}, data=form)
                codes[up.status_code] += 1
                if n % 3 == 0:
                    listed = api.get("/meta/image", params={"limit": 50}).json()["data"]
                    if listed:
                        victim = rng.choice(listed)["meta_uuid"]
                        codes[api.delete(f"/meta/image/{victim}").status_code] += 1
                if worker == 0 and n == len(files) and not wiped.is_set():
                    codes[api.delete("/meta/image/images").status_code] += 1
                    wiped.set()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        job = pool.submit(backfill.run, settings, str(folder.root), SMALL)
        sides = [pool.submit(http_side, w) for w in range(3)]
        for side in sides:
            side.result()
        report = job.result()
    logger.warning("race: %.0f s, http %s, backfill indexed %s failed %s", time.monotonic() -
                   started, dict(codes), report["indexed"], report["failed"])  # fmt: skip
    assert wiped.is_set() and set(codes) <= {200, 404, 409, 503}, codes

    with httpx.Client(base_url=url, timeout=120) as api:
        rows = api.get("/meta/image", params={"limit": 1000}).json()["data"]
        for row in rows:
            assert api.get(row["file_relative_url"]).status_code == 200, row["meta_uuid"]
            found = api.get(f"/sample/meta/{row['meta_uuid']}", params={"limit": 50})
            assert row["meta_uuid"] in [h["meta_uuid"] for h in found.json()["data"]]
    final = reconcile.run(settings, grace_s=0)
    assert final["consistent"] is True, final
