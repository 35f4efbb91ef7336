"""A call that never answers (its replica's node died under it) ends in a retryable 503 after
limits.graph_timeout_s: a search's call is cancelled, an upload's write goes on to the end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from deployments.flows import bounded
from image_search.errors import Overloaded
from image_search.imaging import DecodedImage
from tests.fakes import FakeEmbedder
from tests.unit.deployments.conftest import MODEL_ID, Service, jpeg

TIMEOUT_S = 0.3


class LostEmbedder(FakeEmbedder):
    """Its calls never answer, like a replica on a node that died mid-call."""

    async def embed_query(self, data: bytes, regions: bool = False) -> Any:
        await asyncio.sleep(10)  # far past the bound: without it, the test fails

    async def embed_upload(self, image: DecodedImage) -> Any:
        await asyncio.sleep(10)  # far past the bound: without it, the test fails


@pytest.mark.parametrize("route", ["/sample/file", "/meta/image/file"])
def test_a_call_that_never_answers_gets_503_with_retry_after(
    make_service: Callable[..., Service], route: str
) -> None:
    service = make_service(LostEmbedder(MODEL_ID), **{"limits.graph_timeout_s": TIMEOUT_S})
    started = time.monotonic()
    r = service.client.post(route, files={"file": ("a.jpg", jpeg(1), "image/jpeg")})
    took = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert r.json()["succeed"] is False and "retry shortly" in r.json()["message"]
    assert r.headers["Retry-After"] == str(service.settings.limits.retry_after_s)
    assert TIMEOUT_S <= took < TIMEOUT_S + 5
    assert service.svc.stores.metadata.count() == 0  # nothing half-written


async def _slow(done: list[str], seconds: float) -> str:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        done.append("cancelled")
        raise
    done.append("finished")
    return "written"


def test_a_shielded_call_finishes_after_the_answer() -> None:
    done: list[str] = []

    async def run() -> None:
        with pytest.raises(Overloaded) as err:
            await bounded(_slow(done, 0.2), 0.05, retry_after_s=3, shield=True)
        assert err.value.status == 503 and err.value.retry_after_s == 3
        assert done == []
        await asyncio.sleep(0.4)

    asyncio.run(run())
    assert done == ["finished"]  # a write under way is never cut midway


def test_an_unshielded_call_is_cancelled_at_the_bound() -> None:
    done: list[str] = []

    async def run() -> None:
        with pytest.raises(Overloaded):
            await bounded(_slow(done, 5), 0.05, retry_after_s=1, shield=False)
        await asyncio.sleep(0)

    asyncio.run(run())
    assert done == ["cancelled"]  # a search no one waits for stops costing CPU


def test_a_call_in_time_and_its_errors_pass_through() -> None:
    async def fails() -> None:
        raise ValueError("from the replica")

    async def run() -> None:
        assert await bounded(_slow([], 0), 1.0, retry_after_s=1, shield=True) == "written"
        with pytest.raises(ValueError, match="from the replica"):
            await bounded(fails(), 1.0, retry_after_s=1, shield=False)

    asyncio.run(run())
