"""Coalescer: an idle call runs at once, alone; calls made meanwhile go together as the next."""

from __future__ import annotations

import asyncio

import pytest

from deployments.coalescing import Coalescer


class Recorder:
    """A batch function that records its batches and, while `hold` is clear, waits."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.fail_on = fail_on

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.hold.wait()
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [i * 10 for i in items]


def test_an_idle_call_runs_alone_and_at_once() -> None:
    async def main() -> None:
        run = Recorder()
        coalesce = Coalescer(run, 16, "t")
        assert await asyncio.wait_for(coalesce(1), 1) == 10
        assert await asyncio.wait_for(coalesce(2), 1) == 20
        assert run.batches == [[1], [2]]

    asyncio.run(main())


def test_calls_made_while_a_batch_runs_go_together_as_the_next_up_to_the_size() -> None:
    async def main() -> None:
        run = Recorder()
        coalesce = Coalescer(run, 3, "t")
        run.hold.clear()
        first = asyncio.create_task(coalesce(0))
        await asyncio.sleep(0.01)  # the first batch is running (held)
        later = [asyncio.create_task(coalesce(i)) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        assert run.batches == [[0]]
        run.hold.set()
        assert await first == 0 and [await t for t in later] == [10, 20, 30, 40, 50]
        assert run.batches == [[0], [1, 2, 3], [4, 5]]

    asyncio.run(main())


def test_a_failed_batch_fails_its_own_callers_only() -> None:
    async def main() -> None:
        run = Recorder(fail_on=2)
        coalesce = Coalescer(run, 16, "t")
        run.hold.clear()
        first = asyncio.create_task(coalesce(0))
        await asyncio.sleep(0.01)
        failing = [asyncio.create_task(coalesce(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        run.hold.set()
        assert await first == 0
        for task in failing:
            with pytest.raises(ValueError, match="bad item 2"):
                await task
        assert await coalesce(3) == 30  # and the next batch runs as usual

    asyncio.run(main())


def test_a_caller_that_goes_away_leaves_the_others_their_answers() -> None:
    async def main() -> None:
        run = Recorder()
        coalesce = Coalescer(run, 16, "t")
        run.hold.clear()
        first = asyncio.create_task(coalesce(0))
        await asyncio.sleep(0.01)
        gone, kept = asyncio.create_task(coalesce(1)), asyncio.create_task(coalesce(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        run.hold.set()
        assert await first == 0 and await kept == 20
        assert run.batches == [[0], [2]]  # the cancelled call was not run
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(main())


def test_a_wrong_number_of_results_is_an_error_not_a_mismatch() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> None:
        coalesce = Coalescer(short, 16, "t")
        calls = [coalesce(1), coalesce(2)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)

    asyncio.run(main())


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(Recorder(), 0, "t")


def test_lanes_run_that_many_batches_at_once_and_the_rest_wait_together() -> None:
    async def main() -> None:
        run = Recorder()
        coalesce = Coalescer(run, 16, "t", lanes=2)
        run.hold.clear()
        first = asyncio.create_task(coalesce(0))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(coalesce(1))  # a lane is free: it goes at once
        await asyncio.sleep(0.01)
        assert run.batches == [[0], [1]]
        later = [asyncio.create_task(coalesce(i)) for i in range(2, 5)]
        await asyncio.sleep(0.01)
        assert run.batches == [[0], [1]]  # both lanes busy: these wait, together
        run.hold.set()
        assert [await t for t in (first, second, *later)] == [0, 10, 20, 30, 40]
        assert run.batches == [[0], [1], [2, 3, 4]]

    asyncio.run(main())


def test_cancelled_lanes_tell_the_callers_left_waiting() -> None:
    async def main() -> None:
        run = Recorder()
        coalesce = Coalescer(run, 16, "t", lanes=2)
        run.hold.clear()
        calls = [asyncio.create_task(coalesce(i)) for i in range(2)]
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(coalesce(2))
        await asyncio.sleep(0.01)
        for lane in list(coalesce._workers):  # the replica stopping
            lane.cancel()
        results = await asyncio.gather(*calls, waiting, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)

    asyncio.run(main())


def test_lanes_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(Recorder(), 4, "t", lanes=0)


def test_a_call_made_as_soon_as_the_last_one_is_answered_still_finds_a_lane() -> None:
    # The caller resumes before the ended lane's done-callback has run: counting that lane as
    # busy would leave the call waiting with no lane to run it.
    async def main() -> None:
        run = Recorder()
        coalesce = Coalescer(run, 16, "t", lanes=1)
        for i in range(5):
            assert await coalesce(i) == 10 * i
        assert run.batches == [[i] for i in range(5)]

    asyncio.run(asyncio.wait_for(main(), 2))
