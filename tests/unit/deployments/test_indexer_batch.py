"""The Indexer's batched writes and searches: several callers' calls in one store call each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from image_search.errors import Conflict, NotFound, StoreUnavailable
from image_search.imaging import content_info
from image_search.records import ImageRecord, Upload
from tests.unit.deployments.conftest import Service, jpeg


def recording(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str) -> list[int]:
    """Record the number of items of each call of obj.name (a method taking a list)."""
    sizes: list[int] = []
    real: Callable[..., Any] = getattr(obj, name)

    def call(items: list[Any]) -> Any:
        sizes.append(len(items))
        return real(items)

    monkeypatch.setattr(obj, name, call)
    return sizes


def test_concurrent_uploads_are_written_together_with_one_answer_each(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder: Any = service.flows.decoder._target
    datas = [jpeg(1), jpeg(2), jpeg(1), jpeg(3)]
    uuids = ["a", "b", "c", "a"]  # "c" repeats a's bytes; the second "a" is taken by then
    uploads = [Upload(content_info(d), u, f"{u}.jpg") for d, u in zip(datas, uuids, strict=True)]
    embedded = [service.embedder.embed_upload(decoder.decode(d, True)) for d in datas]
    indexer = service.flows.indexer._target
    batches = recording(monkeypatch, service.svc, "index_many")

    async def upload_all() -> list[Any]:
        calls = zip(uploads, datas, embedded, strict=True)
        return await asyncio.gather(*(indexer.index(u, d, e) for u, d, e in calls))

    out = asyncio.run(upload_all())
    assert batches == [4]
    assert [type(r) for r in out] == [ImageRecord, ImageRecord, ImageRecord, Conflict]
    assert out[0].milvus_id == out[2].milvus_id  # same bytes: one content, one vector
    assert service.svc.counts() == (3, 2)
    assert service.svc.stores.metadata.ref_drift(lease_s=0) == []


def test_concurrent_searches_are_made_together_and_answer_each_caller_its_own(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page each, and an unknown image's NotFound is raised to its own caller alone."""
    for n in range(3):
        assert service.client.post("/meta/image/file", files={"file": ("a.jpg", jpeg(n))},
                                   data={"meta_uuid": f"u{n}"}).status_code == 200  # fmt: skip
    indexer = service.flows.indexer._target
    batches = recording(monkeypatch, service.svc, "search_global")
    searches = [("u1", 1), ("missing", 1), ("u2", 3)]

    async def search_all() -> list[Any]:
        return await asyncio.gather(*(indexer.search_stored(m, 0, n, None) for m, n in searches),
                                    return_exceptions=True)  # fmt: skip

    first, missing, third = asyncio.run(search_all())
    assert batches == [3]
    assert isinstance(missing, NotFound)
    assert [h.record.meta_uuid for h in first] == ["u1"]
    nearest = [h.record.meta_uuid for h in third]
    assert nearest[0] == "u2" and sorted(nearest) == ["u0", "u1", "u2"]
    # A tag filter is searched on its own, outside the batch (no image carries this one).
    tagged = asyncio.run(indexer.search_stored("u0", 0, 1, None, ("x",)))
    assert tagged == [] and batches == [3]


def test_a_store_outage_is_logged_once_by_the_flush_check_not_ten_times_a_second(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    indexer = service.flows.indexer._target
    checks: list[str] = []

    def down() -> None:
        checks.append("down")
        raise StoreUnavailable("refused", "vectors")

    serve_log = logging.getLogger("ray.serve")  # Ray may stop it propagating to the root
    serve_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="ray.serve"):
            service.vectors.flush_if_due = down  # type: ignore[method-assign]
            failing = False
            for _ in range(20):  # two seconds of checks
                failing = indexer._flush_due(failing)
            assert failing and len(checks) == 20  # every check still tries
            del service.vectors.flush_if_due  # the store's own again: it answers
            assert indexer._flush_due(failing) is False
    finally:
        serve_log.removeHandler(caplog.handler)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "flush" in r.getMessage()]
    assert said == [("WARNING", "periodic flush failing: refused"),
                    ("INFO", "periodic flush works again")]  # fmt: skip
