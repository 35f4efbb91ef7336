"""embed_in_parts: a library read a part at a time is embedded in runs of bounded size, and
the runs' results add up to one report."""

from __future__ import annotations

from typing import Any

import pytest

from image_search.config import Settings
from pipelines import dataflow
from pipelines.findings import Content
from pipelines.options import PoolOptions
from pipelines.runtime import LIST_LIMIT


def contents(n: int, start: int) -> list[Content]:
    return [Content(f"{i:064x}", i, f"meta/image/{i:064x}.jpg") for i in range(start, start + n)]


def test_parts_are_joined_into_runs_and_results_added(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[list[int]] = []

    def fake_embed(todo: list[Content], *_: Any) -> dict[str, Any]:
        runs.append([c.milvus_id for c in todo])
        failed = [{"file_path": c.file_path, "reason": "x"} for c in todo if c.milvus_id % 2]
        return {"embedded": len(todo) - len(failed), "failed": failed[:LIST_LIMIT],
                "failed_count": len(failed)}  # fmt: skip

    monkeypatch.setattr(dataflow, "embed_contents", fake_embed)
    sizes = [3, 4, 0, 2500, 2]
    parts, start = [], 0
    for n in sizes:
        parts.append(contents(n, start))
        start += n
    out = dataflow.embed_in_parts(iter(parts), Settings(), "c", PoolOptions(), run_size=5)
    assert [len(r) for r in runs] == [7, 2500, 2]
    assert sorted(i for r in runs for i in r) == list(range(start))  # each content once
    assert out["embedded"] + out["failed_count"] == start and out["failed_count"] == start // 2
    assert len(out["failed"]) == LIST_LIMIT  # the list is capped, the count exact


def test_nothing_to_embed_starts_no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataflow, "embed_contents", lambda *_: pytest.fail("no run expected"))
    out = dataflow.embed_in_parts(iter([[], []]), Settings(), "c", PoolOptions())
    assert out == {"embedded": 0, "failed": [], "failed_count": 0}
