"""`python -m bench.regions_service DIR --short`: the service starts with region search on,
takes the uploads and both modes' searches, and the report is printed and written.

A smoke test of the benchmark, not a benchmark: it asserts that the run works and prints every
figure, never what the figures are. Its evaluation set is built here from the test photos (a
manifest as scripts/eval-photos.sh writes one), so it needs no download.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.evalset import GROUPS
from tests.benchrun import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_BOUND_S = 900  # one server start-up, ~12 uploads, ~40 queries twice; room for a busy machine
ROLES = {"query": ["chelsea", "coffee"], "distractor": ["rocket", "astronaut"],
         "tiles": ["camera"], "filler": ["coins", "moon"]}  # fmt: skip
HEADER = "name\tfile\trole\tseries\tpackage\tversion\tlicence\tauthor\tsha256_16"


def eval_dir(root: Path, photos: dict[str, bytes]) -> Path:
    (root / "photos").mkdir(parents=True)
    lines = [HEADER]
    for role, names in ROLES.items():
        for name in names:
            (root / "photos" / f"{name}.jpg").write_bytes(photos[name])
            lines.append(f"{name}\tphotos/{name}.jpg\t{role}\t{name}\tpkg\t1\tBSD-3-Clause\tx\t0")
    (root / "manifest.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_short_run_reports_every_figure(photos: dict[str, bytes], tmp_path: Path) -> None:
    root, out = eval_dir(tmp_path / "evalset", photos), tmp_path / "regions.json"
    code, output = run_bench("bench.regions_service", str(root), "--short", "--out", str(out),
                             bound_s=RUN_BOUND_S)  # fmt: skip
    assert code == 0, output[-5000:]

    res = json.loads(out.read_text())
    assert res["short"] is True and res["images"] > 0 and res["queries"] > 0
    assert res["region_vectors"] > res["images"]  # a thumbnail view and regions per image
    assert set(res["latency"]) == {"global", "regions"}
    groups = {k for k in res["recall_at_1"] if k in GROUPS}
    assert groups == set(GROUPS), res["recall_at_1"]
    for row in res["recall_at_1"].values():
        assert 0.0 <= row["global"] <= 1.0 and 0.0 <= row["regions"] <= 1.0 and row["n"] > 0
    for printed in ("recall@1", "latency global", "latency regions", "vectors per image",
                    "ingest, 1 client"):  # fmt: skip
        assert printed in output, output[-3000:]
