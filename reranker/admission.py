"""Admission at the front door: work that cannot finish within the deadline is refused before any
of it is done (429 with a Retry-After derived from the backlog), instead of being accepted and
answered 504 after the work was spent.

Each ingress replica knows the work it has admitted and not finished (its backlog), and how fast
finished work leaves it: the service rate, measured as work finished per second of busy time (time
with work in flight), so idle time does not dilute it. A request whose work plus the backlog would
take longer than `max_wait_s` at that rate is refused; its Retry-After is the time until enough of
the backlog has drained for it to fit. With nothing in flight a request is admitted even if it is
larger than that budget (the deadline stays the backstop for it), unless even alone, at the fastest
rate measured so far, it would need more than TOO_LARGE_FACTOR times the deadline: that request is
refused with 413, since no retry would help. The factor covers the estimate's spread: the rate is
measured on other requests' texts, and characters per token differ between texts and tokenizers
(two measured here: 272 estimated for 575 real tokens per pair, and 515 for 512), so a request
only somewhat over the deadline by the estimate is tried, with the deadline as its backstop. The
fastest rate, so a slow moment that lowers the current rate never locks out a request that would
fit; never the prior below, which counts real tokens of a full forward batch.

Work is counted in the ingress's token estimate of a request part (`reranker.pipeline.estimated_tokens`),
the same unit for the backlog and for the rate, so the estimate's bias cancels. Until a rate has been
measured, a prior (the scorer's forward rate timed at start-up) stands in for it; the first
measurement replaces it.

Pure: no Ray and no clock of its own (time comes from `clock`), so it is unit-tested in milliseconds.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

from reranker.errors import OverloadedError, PayloadTooLargeError

# How quickly the rate forgets: a sample's weight halves after this much further busy time.
RATE_HALF_LIFE_S = 20.0
# A request is refused as too large (413) when it would need more than this many deadlines alone.
TOO_LARGE_FACTOR = 2.0


class ServiceRate:
    """Work finished per second of busy time, exponentially weighted by busy time."""

    def __init__(self, half_life_s: float = RATE_HALF_LIFE_S):
        self.half_life_s = half_life_s
        self.work = 0.0
        self.busy_s = 0.0
        self.prior = False

    def seed(self, per_s: float) -> None:
        """A prior rate that stands in until the first measurement; replaces nothing already measured."""
        if per_s > 0 and self.busy_s == 0:
            self.work, self.busy_s, self.prior = per_s, 1.0, True

    def record(self, work: float, busy_s: float) -> None:
        """`work` finished after `busy_s` more seconds of busy time."""
        if self.prior:  # the first measurement replaces the prior entirely
            self.work, self.busy_s, self.prior = 0.0, 0.0, False
        decay = 0.5 ** (busy_s / self.half_life_s)
        self.work = self.work * decay + work
        self.busy_s = self.busy_s * decay + busy_s

    def per_s(self) -> Optional[float]:
        """The rate, or None before anything was measured or seeded."""
        if self.busy_s <= 0 or self.work <= 0:
            return None
        return self.work / self.busy_s


class Ticket:
    """One admitted request: its parts report their work as they finish; `release` ends it."""

    def __init__(self, admission: "Admission", work: float):
        self.admission = admission
        self.remaining = work
        self.open = True

    def part_done(self, work: float) -> None:
        """A part of this request finished: its work leaves the backlog and counts toward the rate."""
        work = min(work, self.remaining)
        if self.open and work > 0:
            self.remaining -= work
            self.admission._finished(work)

    def release(self) -> None:
        """The request is over (answered, failed or cancelled): what is left leaves the backlog unmeasured."""
        if self.open:
            self.open = False
            self.admission._released(self.remaining)
            self.remaining = 0.0


class Admission:
    """Admits a request only if the backlog ahead of it, and itself, finish within `max_wait_s`;
    refuses (413) one that would need more than TOO_LARGE_FACTOR x `deadline_s` even alone."""

    def __init__(
        self,
        max_wait_s: float,
        deadline_s: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
        rate: Optional[ServiceRate] = None,
    ):
        if max_wait_s <= 0:
            raise ValueError("max_wait_s must be positive")
        self.max_wait_s = max_wait_s
        self.deadline_s = deadline_s
        self.clock = clock
        self.rate = rate or ServiceRate()
        self.fastest_per_s: Optional[float] = None  # the highest measured rate so far (never the prior)
        self.backlog = 0.0  # admitted work not yet finished
        self.in_flight = 0  # admitted requests not yet released
        self._busy_unrecorded_s = 0.0
        self._last_tick = clock()

    def _tick(self) -> None:
        """Adds the busy time since the last event (time with a request in flight)."""
        now = self.clock()
        if self.in_flight > 0:
            self._busy_unrecorded_s += max(now - self._last_tick, 0.0)
        self._last_tick = now

    def fastest_alone_s(self, work: float) -> Optional[float]:
        """Seconds `work` needs with nothing ahead of it at the fastest rate measured; None before a measurement."""
        return work / self.fastest_per_s if self.fastest_per_s else None

    def estimated_wait_s(self, work: float) -> Optional[float]:
        """Seconds until `work` would be finished behind the current backlog; None while the rate is unknown."""
        per_s = self.rate.per_s()
        return None if per_s is None else (self.backlog + work) / per_s

    def admit(self, work: float) -> Ticket:
        """A ticket for `work`; OverloadedError (429) with Retry-After when it would not finish in time
        behind the backlog, PayloadTooLargeError (413) when it is far too large even alone."""
        self._tick()
        alone_s = self.fastest_alone_s(work)
        if self.deadline_s is not None and alone_s is not None and alone_s > TOO_LARGE_FACTOR * self.deadline_s:
            raise PayloadTooLargeError(
                f"This request needs about {alone_s:.0f} s of scoring even with nothing ahead of it, far more than "
                f"request_deadline_s ({self.deadline_s:g} s): send fewer or shorter documents, or raise request_deadline_s."
            )
        wait_s = self.estimated_wait_s(work)
        if self.in_flight > 0 and wait_s is not None and wait_s > self.max_wait_s:
            per_s = self.rate.per_s()
            # Until it fits: the excess drains at the rate, or the whole backlog for a request that
            # only fits alone.
            retry_after_s = min(wait_s - self.max_wait_s, self.backlog / per_s)
            raise OverloadedError(
                f"Overloaded: this request would finish in about {wait_s:.0f} s behind the work already "
                f"admitted, past the admission limit of {self.max_wait_s:.0f} s; retry later.",
                retry_after_s=max(1, math.ceil(retry_after_s)),
            )
        self.in_flight += 1
        self.backlog += work
        return Ticket(self, work)

    def _finished(self, work: float) -> None:
        self._tick()
        self.backlog = max(self.backlog - work, 0.0)
        self.rate.record(work, self._busy_unrecorded_s)
        self._busy_unrecorded_s = 0.0
        per_s = self.rate.per_s()
        if per_s:
            self.fastest_per_s = max(self.fastest_per_s or 0.0, per_s)

    def _released(self, remaining: float) -> None:
        self._tick()
        self.backlog = max(self.backlog - remaining, 0.0)
        self.in_flight -= 1
