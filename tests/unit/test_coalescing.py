"""Tier 1: the ingress's call coalescer (reranker/coalescing.py), on a plain event loop with a fake call."""

from __future__ import annotations

import asyncio

import pytest

from reranker.coalescing import Coalescer


class GatedCalls:
    """A handle method stand-in: each call records its items and waits until the test releases it."""

    def __init__(self, answer=lambda item: item * 10):
        self.answer = answer
        self.calls: list[list] = []
        self.gates: list[asyncio.Event] = []
        self.cancelled: list[list] = []

    async def send(self, items: list) -> list:
        self.calls.append(list(items))
        gate = asyncio.Event()
        self.gates.append(gate)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(list(items))
            raise
        return [self.answer(item) for item in items]


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def coalescer(calls: GatedCalls, budget: int = 100, max_in_flight: int = 2, sizes=None) -> Coalescer:
    observed = []
    result = Coalescer(calls.send, lambda item: (sizes or {}).get(item, 10), lambda: budget, max_in_flight, observed.append)
    result.observed = observed
    return result


def test_idle_items_go_at_once_each_in_its_own_call():
    async def scenario():
        calls = GatedCalls()
        queue = coalescer(calls)
        first = asyncio.create_task(queue.submit(1))
        second = asyncio.create_task(queue.submit(2))
        await settle()
        assert calls.calls == [[1], [2]]  # below max_in_flight: nothing waits for company
        for gate in calls.gates:
            gate.set()
        assert await asyncio.gather(first, second) == [10, 20]
        assert queue.in_flight == 0 and queue.observed == [1, 1]

    asyncio.run(scenario())


def test_items_that_wait_go_together_when_a_call_returns_and_each_gets_its_own_result():
    async def scenario():
        calls = GatedCalls()
        queue = coalescer(calls, budget=45)
        tasks = [asyncio.create_task(queue.submit(item)) for item in range(1, 6)]
        await settle()
        assert calls.calls == [[1], [2]]  # both slots busy: 3, 4 and 5 wait (30 of the 45 budget)
        calls.gates[0].set()
        await settle()
        assert calls.calls[2] == [3, 4, 5]  # one call for all that waited, in order
        for gate in calls.gates:
            gate.set()
        assert await asyncio.gather(*tasks) == [10 * item for item in range(1, 6)]
        assert queue.observed == [1, 1, 3]

    asyncio.run(scenario())


def test_a_full_budget_of_waiting_items_goes_without_waiting_for_a_free_slot():
    async def scenario():
        calls = GatedCalls()
        queue = coalescer(calls, budget=30, max_in_flight=1)
        tasks = [asyncio.create_task(queue.submit(item)) for item in range(1, 6)]
        await settle()
        # One slot, busy with [1]: [2, 3, 4] fill the budget and go; [5] alone waits for a slot.
        assert calls.calls == [[1], [2, 3, 4]]
        calls.gates[0].set()
        await settle()
        assert len(calls.calls) == 2  # [2, 3, 4] still holds the one slot
        calls.gates[1].set()
        await settle()
        assert calls.calls[2] == [5]
        for gate in calls.gates:
            gate.set()
        assert await asyncio.gather(*tasks) == [10, 20, 30, 40, 50]

    asyncio.run(scenario())


def test_an_item_larger_than_the_budget_goes_alone():
    async def scenario():
        calls = GatedCalls()
        queue = coalescer(calls, budget=30, max_in_flight=1, sizes={2: 80})
        tasks = [asyncio.create_task(queue.submit(item)) for item in (1, 2, 3)]
        await settle()
        assert calls.calls == [[1], [2]]
        calls.gates[0].set()
        calls.gates[1].set()
        await settle()
        assert calls.calls[2] == [3]
        calls.gates[2].set()
        assert await asyncio.gather(*tasks) == [10, 20, 30]

    asyncio.run(scenario())


def test_an_error_for_one_item_reaches_only_its_caller_and_a_failed_call_reaches_all_of_its_own():
    async def scenario():
        calls = GatedCalls(answer=lambda item: ValueError(f"bad {item}") if item == 4 else item * 10)
        queue = coalescer(calls, max_in_flight=1)
        tasks = [asyncio.create_task(queue.submit(item)) for item in (1, 3, 4, 5)]
        await settle()
        calls.gates[0].set()
        await settle()
        assert calls.calls == [[1], [3, 4, 5]]
        calls.gates[1].set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[:2] == [10, 30] and results[3] == 50
        assert isinstance(results[2], ValueError) and str(results[2]) == "bad 4"

        async def lost(items):
            raise ConnectionError("replica lost")

        failing = Coalescer(lost, lambda item: 1, lambda: 10, 1)
        outcomes = await asyncio.gather(*(failing.submit(item) for item in range(3)), return_exceptions=True)
        assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
        assert failing.in_flight == 0

        async def short(items):
            return items[:-1]

        miscounted = Coalescer(short, lambda item: 1, lambda: 10, 1)
        outcomes = await asyncio.gather(*(miscounted.submit(item) for item in range(3)), return_exceptions=True)
        assert all(isinstance(outcome, RuntimeError) for outcome in outcomes), outcomes  # never a hang

    asyncio.run(scenario())


def test_a_cancelled_waiting_item_is_never_sent_and_a_call_nobody_waits_for_is_cancelled():
    async def scenario():
        calls = GatedCalls()
        queue = coalescer(calls, max_in_flight=1)
        first = asyncio.create_task(queue.submit(1))
        waiting = asyncio.create_task(queue.submit(2))
        kept = asyncio.create_task(queue.submit(3))
        await settle()
        waiting.cancel()  # a request past its deadline, still queued
        await settle()
        calls.gates[0].set()
        await settle()
        assert calls.calls == [[1], [3]]
        # Every caller of the call in flight goes: the call itself is cancelled on its way.
        kept.cancel()
        await settle()
        assert calls.cancelled == [[3]]
        assert await first == 10
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert queue.in_flight == 0

    asyncio.run(scenario())
