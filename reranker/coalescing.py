"""Coalesces the ingress's concurrent handle calls into fewer, larger ones, only when they would queue.

An item is sent at once, as a call of its own, while fewer than `max_in_flight` calls are
outstanding. Beyond that it waits, and the items that waited go out together as one call as soon
as a call returns, or at once when they add up to `budget()` (a scorer window's worth of tokens).
At low load nothing waits; under load one Serve call carries several requests, so the per-call
cost of each hop (Serve's request path, router, metrics and access log: about 5 ms of CPU per call
in the tokenizer and in the scorer on the 2-core machine, benchmarks/RESULTS.md section 7) is paid
once per window, and the scorer's batch windows fill up.

Serve's `@serve.batch` forms a batch on its timer before it waits for its concurrency limit, so
under load it queues many small batches instead of one large one; hence this.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, Optional, Sequence, TypeVar

logger = logging.getLogger("ray.serve")

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(eq=False)
class _Call:
    """Items sent together; the call is cancelled when every one of their callers has gone."""

    waiting: list["_Waiting"]
    task: Optional[asyncio.Task] = None

    def abandon_if_unwanted(self) -> None:
        if self.task is not None and all(entry.future.cancelled() for entry in self.waiting):
            self.task.cancel()


@dataclass(eq=False)
class _Waiting:
    item: object
    size: int
    future: asyncio.Future
    call: Optional[_Call] = field(default=None, repr=False)


class Coalescer(Generic[Item, Result]):
    """`await submit(item)` answers `send`'s result for that item.

    `send(items)` makes one handle call and answers one result per item, in order; a result that
    is an exception is raised to that item's caller only. An exception raised by `send` itself
    (a lost replica, a deployment that is not there) reaches every caller of that call.
    """

    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[Sequence[object]]],
        size: Callable[[Item], int],
        budget: Callable[[], int],
        max_in_flight: float,
        on_call: Optional[Callable[[int], None]] = None,
    ):
        self.send = send
        self.size = size
        self.budget = budget
        self.max_in_flight = max_in_flight
        self.on_call = on_call
        self.in_flight = 0
        self._queue: deque[_Waiting] = deque()
        self._queued_size = 0

    async def submit(self, item: Item) -> Result:
        entry = _Waiting(item, self.size(item), asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        self._queued_size += entry.size
        self._dispatch()
        try:
            return await entry.future
        except asyncio.CancelledError:
            if entry.call is None:  # still queued: it never reaches a replica
                self._queue.remove(entry)
                self._queued_size -= entry.size
            else:
                entry.call.abandon_if_unwanted()
            raise

    def _dispatch(self) -> None:
        budget = self.budget()  # live: the scorer's window may change through its user_config
        while self._queue and (self.in_flight < self.max_in_flight or self._queued_size >= budget):
            taken = [self._queue.popleft()]
            size = taken[0].size
            while self._queue and size + self._queue[0].size <= budget:
                size += self._queue[0].size
                taken.append(self._queue.popleft())
            self._queued_size -= size
            call = _Call(taken)
            for entry in taken:
                entry.call = call
            self.in_flight += 1
            call.task = asyncio.ensure_future(self._run(call))
            if self.on_call is not None:
                try:
                    self.on_call(len(taken))
                except Exception:  # a metric must never stall the queue
                    logger.exception("Recording a coalesced call failed")

    async def _run(self, call: _Call) -> None:
        try:
            results = list(await self.send([entry.item for entry in call.waiting]))
            if len(results) != len(call.waiting):
                raise RuntimeError(f"{len(results)} results for {len(call.waiting)} items in one call")
        except asyncio.CancelledError:
            for entry in call.waiting:
                entry.future.cancel()
        except Exception as exc:  # noqa: BLE001 - delivered to every caller of this call
            for entry in call.waiting:
                if not entry.future.done():
                    entry.future.set_exception(exc)
        else:
            for entry, result in zip(call.waiting, results):
                if entry.future.done():
                    continue
                if isinstance(result, BaseException):
                    entry.future.set_exception(result)
                else:
                    entry.future.set_result(result)
        finally:
            self.in_flight -= 1
            self._dispatch()
