"""pipelines.duplicates submitted with `ray job submit`: the JSON and CSV reports hold the groups
that GET /duplicates finds on the same stores; threshold 0 keeps only exact copies; bad flags
stop the job before it starts."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bench.edits import EDITS
from image_search.duplicates import DuplicateQuery
from image_search.indexing import IndexService
from pipelines import backfill
from pipelines import duplicates as job
from tests.conftest import ROOT, VENV_BIN
from tests.pipelines.conftest import SMALL, as_env, settings_for, store_overrides

pytestmark = pytest.mark.integration

UNRELATED = ["rocket", "astronaut", "camera", "moon"]


def save(root: Path, name: str, data: bytes) -> Path:
    path = root / name
    path.write_bytes(data)
    return path


def reencoded(data: bytes, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, format=fmt, **kw)
    return buf.getvalue()


def fill(root: Path, photos: dict[str, bytes]) -> Path:
    """A folder for the backfill, and a manifest that also adds a second row for one photo's
    bytes (a byte copy under another meta_uuid)."""
    root.mkdir()
    chelsea = Image.open(io.BytesIO(photos["chelsea"])).convert("RGB")
    coffee = Image.open(io.BytesIO(photos["coffee"])).convert("RGB")
    files = {
        "chelsea.jpg": photos["chelsea"],
        "chelsea-png.png": reencoded(photos["chelsea"], "PNG"),
        "chelsea-q60.jpg": reencoded(photos["chelsea"], "JPEG", quality=60),
        "chelsea-bright.jpg": EDITS["brighter"](chelsea),
        "coffee.jpg": photos["coffee"],
        "coffee-crop.jpg": EDITS["crop"](coffee),
        **{f"{n}.jpg": photos[n] for n in UNRELATED},
    }
    rows = [{"path": str(save(root, name, data)), "meta_uuid": Path(name).stem}
            for name, data in files.items()]  # fmt: skip
    rows.append({"path": str(root / "chelsea.jpg"), "meta_uuid": "chelsea-copy"})
    manifest = root.parent / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return manifest


def submit_job(
    dashboard: str, env: dict[str, str], args: list[str]
) -> subprocess.CompletedProcess[str]:
    """The README's `ray job submit`, for this job."""
    cmd = [
        str(VENV_BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", str(ROOT),
        "--runtime-env-json", json.dumps({"env_vars": env}),
        "--submission-id", f"duplicates-{uuid.uuid4().hex[:8]}", "--",
        sys.executable, "-m", "pipelines.duplicates", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=420, env={**os.environ})


def report_groups(report: dict[str, Any]) -> list[list[str]]:
    return [[m["meta_uuid"] for m in g["members"]] for g in report["groups"]]


def test_duplicates_job_matches_the_route_and_writes_json_and_csv(
    ray_cluster: dict[str, str], photos: dict[str, bytes], data_dir: Path, tmp_path: Path
) -> None:
    overrides = store_overrides(data_dir)
    settings = settings_for(overrides)
    manifest = fill(tmp_path / "photos", photos)
    assert backfill.run(settings, str(manifest), SMALL)["indexed"] == 11

    out = tmp_path / "out"
    args = ["--report", str(out / "dups.json"), "--block", "3", "--search-cpus", "0",
            "--threshold", "0.5"]  # fmt: skip
    res = submit_job(ray_cluster["dashboard"], as_env(overrides), args)
    logs = res.stdout + res.stderr
    assert res.returncode == 0, logs[-4000:]
    assert "duplicates done: 2 groups holding 7 of 11 images" in logs
    assert "MapBatches(RangeSearchStage)" in logs  # the searches ran as a Ray Data stage

    report = json.loads((out / "dups.json").read_text())
    summary = report["summary"]
    assert (summary["images"], summary["contents"], summary["groups"]) == (11, 10, 2)
    assert summary["images_in_groups"] == 7 and summary["threshold"] == 0.5
    assert report_groups(report) == [
        ["chelsea-png", "chelsea", "chelsea-copy", *report_groups(report)[0][3:]],
        ["coffee", "coffee-crop"],
    ]
    assert sorted(report_groups(report)[0][3:]) == ["chelsea-bright", "chelsea-q60"]
    first = report["groups"][0]
    assert [m["match"] for m in first["members"]] == [
        "best", "same_pixels", "same_pixels", "near", "near"]  # fmt: skip
    assert first["best"] == "chelsea-png" and first["size"] == 5

    # The route's grouping over the same stores: the same groups, the same distances.
    svc = IndexService.from_settings(settings)
    page = svc.duplicates(DuplicateQuery(0.5, 0, 100, settings.duplicates))
    online = [
        [(m.record.meta_uuid, m.fields()["distance"]) for m in g.members] for g in page.groups
    ]
    offline = [[(m["meta_uuid"], m["distance"]) for m in g["members"]] for g in report["groups"]]
    assert [[u for u, _ in g] for g in online] == [[u for u, _ in g] for g in offline]
    for got, want in zip(online, offline, strict=True):
        assert [d for _, d in got] == pytest.approx([d for _, d in want], abs=1e-5)

    with open(out / "dups.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(job.CSV_COLUMNS) and len(rows) == 7
    firsts = [(r["group"], r["rank"], r["keep"]) for r in rows[:2]]
    assert firsts == [("1", "1", "True"), ("1", "2", "False")]
    assert [r["meta_uuid"] for r in rows] == [u for g in report_groups(report) for u in g]
    assert all(int(r["width"]) > 0 and int(r["size_bytes"]) > 0 for r in rows)

    # In process, on the same cluster: threshold 0 keeps the copies the model cannot tell apart.
    opts = Namespace(neighbors=32, block=4, search_actors=1, search_cpus=0)
    exact = job.run(settings, str(out / "exact.json"), str(out / "exact.csv"), 0.0, opts)
    assert (exact["groups"], exact["images_in_groups"]) == (1, 3)
    doc = json.loads((out / "exact.json").read_text())
    assert report_groups(doc) == [["chelsea-png", "chelsea", "chelsea-copy"]]


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--threshold", "-0.1"], "threshold must be a number from 0 to 1.0"),
        (["--threshold", "nan"], "threshold must be a number from 0 to 1.0"),
        (["--threshold", "1.5"], "threshold must be a number from 0 to 1.0"),
        (["--threshold", "abc"], "invalid float value"),
        (["--neighbors", "0"], "must be at least 1"),
        ([], "--report PATH.json is required"),
    ],
)
def test_bad_flags_stop_the_job_before_it_starts(
    args: list[str], why: str, data_dir: Path, tmp_path: Path
) -> None:
    report = [] if not args else ["--report", str(tmp_path / "r.json")]
    env = {**os.environ, **as_env(store_overrides(data_dir))}
    cmd = [sys.executable, "-m", "pipelines.duplicates", *report, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert res.returncode != 0 and why in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "r.json").exists()
