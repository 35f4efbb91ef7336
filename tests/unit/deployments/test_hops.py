"""Batched hops: alone a call is the method itself; under load the calls go as one `many`,
each with its own result or error."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any, cast

import pytest

from deployments.flows import bounded
from deployments.hops import BatchedHandle, Raised, run_many
from image_search.errors import InvalidImage, Overloaded, SearchEngineError
from tests.fakes import FakeHandle


class Replica:
    """A deployment's methods, as the Ingress calls them, and what reached it."""

    def __init__(self) -> None:
        self.sent: list[str] = []  # "method" for a call alone, "many:N" for a batch
        self.hold = asyncio.Event()
        self.hold.set()
        self.threads: set[str] = set()

    async def double(self, x: int) -> int:
        self.sent.append("double")
        await self.hold.wait()
        return self._double(x)

    def _double(self, x: int) -> int:
        if x < 0:
            raise InvalidImage(f"bad {x}")
        if x == 13:
            raise KeyError("unexpected")
        return 2 * x

    def plain(self, x: int) -> int:
        self.threads.add(threading.current_thread().name)
        return self._double(x)

    async def many(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        self.sent.append(f"many:{len(calls)}")
        await self.hold.wait()
        return await run_many(self, ("double", "plain"), calls)


def test_the_replica_runs_each_call_with_its_own_result_or_error() -> None:
    replica = Replica()
    calls = [("double", (1,)), ("double", (-1,)), ("plain", (3,)), ("double", (13,)),
             ("secret", (0,))]  # fmt: skip
    out = asyncio.run(run_many(replica, ("double", "plain"), calls))
    assert out[0] == 2 and out[2] == 6
    assert isinstance(out[1], Raised) and isinstance(out[1].error, InvalidImage)
    # Unexpected: still that call's alone, a 500 in the envelope as it would be alone.
    assert isinstance(out[3], Raised) and out[3].error.status == 500
    assert "KeyError" in out[3].error.message
    # Only the methods the replica names may be called this way.
    assert isinstance(out[4], Raised) and "not batched" in out[4].error.message
    # A plain `def` runs off the event loop, as Serve would run it.
    assert replica.threads and threading.main_thread().name not in replica.threads


def test_an_idle_call_is_the_method_itself() -> None:
    async def main() -> None:
        replica = Replica()
        hop = BatchedHandle(FakeHandle(replica), "t", lanes=2)
        assert await hop.call("double", 4) == 8
        with pytest.raises(InvalidImage):
            await hop.call("double", -4)
        assert replica.sent == ["double", "double"]

    asyncio.run(main())


def test_calls_that_find_the_lanes_busy_go_as_one_and_keep_their_own_outcomes() -> None:
    async def main() -> None:
        replica = Replica()
        hop = BatchedHandle(FakeHandle(replica), "t", max_calls=8, lanes=2)
        replica.hold.clear()
        busy = []
        for i in (1, 2):  # one after the other: each finds a lane free
            busy.append(asyncio.create_task(hop.call("double", i)))
            await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(hop.call("double", i)) for i in (3, -3, 5)]
        await asyncio.sleep(0.01)
        replica.hold.set()
        results = await asyncio.gather(*busy, *waiting, return_exceptions=True)
        assert results[:3] == [2, 4, 6] and results[4] == 10
        assert isinstance(results[3], InvalidImage)  # that caller's error alone
        assert replica.sent[:2] == ["double", "double"] and replica.sent[2] == "many:3"

    asyncio.run(main())


def test_a_batch_that_fails_whole_fails_each_of_its_callers() -> None:
    class Gone(Replica):
        async def many(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
            raise ConnectionError("replica died")

    async def main() -> None:
        replica = Gone()
        hop = BatchedHandle(FakeHandle(replica), "t", lanes=1)
        replica.hold.clear()
        first = asyncio.create_task(hop.call("double", 1))
        await asyncio.sleep(0.01)
        batch = [asyncio.create_task(hop.call("double", i)) for i in (2, 3)]
        await asyncio.sleep(0.01)
        replica.hold.set()
        assert await first == 2
        results = await asyncio.gather(*batch, return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)

    asyncio.run(main())


def test_a_call_that_never_answers_frees_its_lane_at_the_bound() -> None:
    # A replica lost mid-call may never answer: its lane must not stay taken for ever.
    class Hung(Replica):
        def __init__(self) -> None:
            super().__init__()
            self.hang = True

        async def double(self, x: int) -> int:
            if self.hang:
                self.hang = False
                await asyncio.Event().wait()  # never set
            return 2 * x

    async def main() -> None:
        replica = Hung()
        hop = BatchedHandle(FakeHandle(replica), "t",
                            lambda call: bounded(call, 0.05, 1, shield=True), lanes=1)  # fmt: skip
        with pytest.raises(Overloaded):
            await hop.call("double", 1)
        assert await asyncio.wait_for(hop.call("double", 2), 1) == 4

    asyncio.run(main())


def test_errors_cross_a_process_boundary_whole() -> None:
    import pickle

    raised = pickle.loads(pickle.dumps(Raised(SearchEngineError("internal error: KeyError"))))
    assert raised.error.message == "internal error: KeyError" and raised.error.status == 500


def test_the_ingress_sets_the_lanes_of_every_hop_from_its_user_config(service: Any) -> None:
    from deployments.ingress import Ingress

    # The replica's own method, on a stand-in holding the flows (an instance of Serve's
    # ASGI wrapper would need a running replica).
    reconfigure = cast(Any, Ingress).func_or_class.reconfigure
    ingress = SimpleNamespace(flows=service.flows)
    reconfigure(ingress, {"hop_lanes": 3})
    hops = (service.flows.to_decoder, service.flows.to_embedder, service.flows.to_indexer)
    assert [h._calls.lanes for h in hops] == [3, 3, 3]
    with pytest.raises(ValueError, match="at least 1"):
        reconfigure(ingress, {"hop_lanes": 0})


def test_the_ingress_sets_direct_decode_max_from_its_user_config(service: Any) -> None:
    from deployments.flows import DIRECT_DECODE_MAX
    from deployments.ingress import Ingress

    reconfigure = cast(Any, Ingress).func_or_class.reconfigure
    ingress = SimpleNamespace(flows=service.flows)
    reconfigure(ingress, {"hop_lanes": 2, "direct_decode_max": 0})
    assert service.flows.direct_decode_max == 0
    reconfigure(ingress, {"hop_lanes": 2})  # not given: the default again
    assert service.flows.direct_decode_max == DIRECT_DECODE_MAX
    with pytest.raises(ValueError, match="at least 0"):
        reconfigure(ingress, {"direct_decode_max": -1})
