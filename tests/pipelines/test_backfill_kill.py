"""A backfill job stopped midway (`ray job stop`) and submitted again indexes each image once."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from image_search.stores import open_metadata
from pipelines.findings import scan
from tests.pipelines.conftest import (
    SMALL_POOLS,
    as_env,
    make_photo_dir,
    poll,
    settings_for,
    store_overrides,
    stores_for,
    submit,
    wait_job,
)

pytestmark = pytest.mark.integration
COUNT = 120  # enough work that the stop lands while the writer is busy


def test_stopped_job_rerun_indexes_each_image_exactly_once(
    ray_cluster: dict[str, str],
    photos: dict[str, bytes],
    data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from ray.job_submission import JobSubmissionClient

    dashboard = ray_cluster["dashboard"]
    src = make_photo_dir(tmp_path_factory.mktemp("photos120"), photos, COUNT, bad=False)
    overrides = store_overrides(data_dir)
    settings = settings_for(overrides)
    metadata = open_metadata(settings)
    metadata.create_schema()  # so the test can count rows before the job's first commit
    env = as_env(overrides)
    small = [a if a != "8" else "4" for a in SMALL_POOLS]  # small batches: many commits

    first = f"backfill-kill-{uuid.uuid4().hex[:8]}"
    res = submit(dashboard, env, first, ["--source", str(src.root), *small], wait=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert poll(lambda: metadata.count() > 0, timeout=300, every=0.1), "no row was ever written"
    # `ray job stop` is this same REST call; the CLI would add seconds of start-up here.
    JobSubmissionClient(dashboard).stop_job(first)
    assert wait_job(dashboard, first) == "STOPPED"
    partial = metadata.count()
    assert 0 < partial < COUNT, f"the stop must land midway, got {partial} rows"

    report_path = data_dir / "rerun.json"
    again = f"backfill-rerun-{uuid.uuid4().hex[:8]}"
    res = submit(dashboard, env, again, ["--source", str(src.root), "--report", str(report_path),
                                          *small])  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    report = json.loads(report_path.read_text())
    assert report["duplicates"] == partial
    assert report["indexed"] == COUNT - partial
    assert report["failed"] == report["conflicts"] == 0

    st = stores_for(settings)
    assert st.metadata.count() == COUNT
    assert st.vectors.count() == COUNT
    assert len(list(st.objects.keys("meta/image/"))) == COUNT
    findings = scan(st)  # what the stopped job left half-written was adopted by the rerun
    assert findings.consistent, (findings.orphan_vectors, findings.orphan_objects)
