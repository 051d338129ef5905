"""Tier 1: deadline-aware admission (reranker/admission.py) and its place in the pipeline (no Ray)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from handle_fakes import FakeEncoded, FakeMethod, FakeResponse

from reranker.admission import Admission, ServiceRate
from reranker.errors import OverloadedError, PayloadTooLargeError, error_headers
from reranker.messages import DocScores, PairRequest
from reranker.pipeline import Pipeline, estimated_tokens, split_request
from reranker.settings import RerankerSettings


class Clock:
    """A hand-moved clock, so busy time is exact."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def measured(rate_per_s: float, clock: Clock, admission: Admission, work: float = 100.0) -> None:
    """Runs one request of `work` alone at `rate_per_s`, so the admission has measured that rate."""
    ticket = admission.admit(work)
    clock.advance(work / rate_per_s)
    ticket.part_done(work)
    ticket.release()


def test_rate_is_work_per_busy_second_and_idle_time_does_not_dilute_it():
    clock = Clock()
    admission = Admission(max_wait_s=10, clock=clock)
    assert admission.rate.per_s() is None
    measured(50.0, clock, admission)
    clock.advance(300)  # idle: nothing in flight
    measured(50.0, clock, admission)
    assert admission.rate.per_s() == pytest.approx(50.0)
    assert admission.backlog == 0 and admission.in_flight == 0


def test_concurrent_requests_measure_the_throughput_not_one_requests_latency():
    """Two requests sharing a server that finishes 50 work units/s: each takes 4 s, but the rate is 50/s."""
    clock = Clock()
    admission = Admission(max_wait_s=10, clock=clock)
    first, second = admission.admit(100), admission.admit(100)
    clock.advance(2)
    first.part_done(100)
    first.release()
    clock.advance(2)
    second.part_done(100)
    second.release()
    assert admission.rate.per_s() == pytest.approx(50.0)


def test_refuses_what_would_finish_past_the_limit_with_a_retry_after_from_the_backlog():
    clock = Clock()
    admission = Admission(max_wait_s=10, clock=clock)
    measured(10.0, clock, admission)  # 10 work units per second
    held = [admission.admit(40), admission.admit(40)]  # 8 s of backlog
    assert admission.estimated_wait_s(20) == pytest.approx(10.0)
    third = admission.admit(20)  # finishes at 10 s: exactly at the limit, admitted
    with pytest.raises(OverloadedError) as refused:
        admission.admit(30)  # would finish at 13 s
    error = refused.value
    assert error.status_code == 429 and error.reason == "overloaded"
    # 3 s of excess at the measured rate: retry after 3 s.
    assert error.retry_after_s == 3 and error_headers(error)["Retry-After"] == "3"
    assert admission.in_flight == 3 and admission.backlog == 100  # the refused request left nothing behind
    # Once its excess has drained (and a little more), it fits.
    clock.advance(4)
    held[0].part_done(40)
    admission.admit(30).release()
    for ticket in [*held, third]:
        ticket.release()
    assert admission.backlog == 0 and admission.in_flight == 0


def test_retry_after_is_at_least_one_second_and_rounds_up():
    clock = Clock()
    admission = Admission(max_wait_s=10, clock=clock)
    measured(10.0, clock, admission)
    admission.admit(95)
    with pytest.raises(OverloadedError) as refused:
        admission.admit(6)  # 10.1 s: 0.1 s over
    assert refused.value.retry_after_s == 1


def test_a_request_larger_than_the_limit_is_admitted_alone_and_told_to_wait_for_the_backlog():
    clock = Clock()
    admission = Admission(max_wait_s=10, clock=clock)
    measured(10.0, clock, admission)
    # Alone it is admitted, whatever its size: the deadline is the backstop.
    big = admission.admit(500)
    with pytest.raises(OverloadedError) as refused:
        admission.admit(500)
    # It only fits once the backlog is gone: 500 units at 10/s.
    assert refused.value.retry_after_s == 50
    big.release()
    admission.admit(500).release()


def test_a_request_that_could_not_finish_within_the_deadline_even_alone_is_refused_with_413():
    clock = Clock()
    admission = Admission(max_wait_s=10, deadline_s=60, clock=clock)
    admission.admit(10_000).release()  # no rate known yet: nothing is refused
    measured(10.0, clock, admission)
    admission.admit(1200).release()  # 120 s alone: within twice the deadline, tried (past max_wait_s)
    with pytest.raises(PayloadTooLargeError) as refused:
        admission.admit(1300)  # 130 s even alone
    error = refused.value
    assert error.status_code == 413 and error.retry_after_s is None
    assert "130 s" in str(error) and "request_deadline_s (60 s)" in str(error)
    assert admission.in_flight == 0 and admission.backlog == 0
    # Refused before the backlog is even considered: a 413, not a 429, with work in flight.
    held = admission.admit(100)
    with pytest.raises(PayloadTooLargeError):
        admission.admit(1300)
    held.release()


def test_the_fastest_measured_rate_decides_what_is_too_large_so_a_slow_moment_locks_nothing_out():
    clock = Clock()
    admission = Admission(max_wait_s=10, deadline_s=60, clock=clock)
    admission.rate.seed(1.0)  # a prior (the scorer's forward rate) refuses nothing as too large
    admission.admit(10_000).release()
    measured(20.0, clock, admission)
    for _ in range(5):
        measured(5.0, clock, admission)  # a slow moment: the current rate falls toward 5/s
    assert admission.rate.per_s() < 10.0
    assert admission.fastest_alone_s(2000) == pytest.approx(100.0)
    admission.admit(2400).release()  # 120 s at the fastest rate measured: within twice the deadline
    with pytest.raises(PayloadTooLargeError):
        admission.admit(2600)  # 130 s even at that rate


def test_without_a_rate_everything_is_admitted_and_a_prior_stands_in_until_measured():
    clock = Clock()
    admission = Admission(max_wait_s=10, clock=clock)
    tickets = [admission.admit(1000) for _ in range(5)]  # nothing known: admitted
    for ticket in tickets:
        ticket.release()
    assert admission.rate.per_s() is None
    admission.rate.seed(100.0)
    assert admission.rate.per_s() == pytest.approx(100.0)
    held = admission.admit(900)
    with pytest.raises(OverloadedError):
        admission.admit(200)  # 11 s at the prior
    held.release()
    # The first measurement replaces the prior entirely.
    measured(10.0, clock, admission)
    assert admission.rate.per_s() == pytest.approx(10.0)
    admission.rate.seed(1000.0)  # a prior never replaces a measurement
    assert admission.rate.per_s() == pytest.approx(10.0)


def test_rate_follows_a_change_within_a_few_half_lives():
    rate = ServiceRate(half_life_s=20)
    for _ in range(20):
        rate.record(100, 10)  # 10/s
    for _ in range(12):
        rate.record(200, 10)  # 20/s for 120 s of busy time
    assert rate.per_s() == pytest.approx(20, rel=0.05)


def test_parts_leave_the_backlog_as_they_finish_and_release_removes_the_rest_unmeasured():
    clock = Clock()
    admission = Admission(max_wait_s=10, clock=clock)
    measured(10.0, clock, admission)
    ticket = admission.admit(60)
    clock.advance(2)
    ticket.part_done(20)
    assert admission.backlog == 40
    clock.advance(8)  # the rest fails after 8 more busy seconds: not counted as finished work
    ticket.release()
    ticket.release()  # idempotent
    ticket.part_done(40)  # a late part of a released request changes nothing
    assert admission.backlog == 0 and admission.in_flight == 0


def test_max_wait_must_be_positive():
    with pytest.raises(ValueError):
        Admission(max_wait_s=0)


# ----- in the pipeline ------------------------------------------------------------------------


class GatedScorer:
    """Answers the canary at once; holds every later call until the test opens the gate, so requests stay in flight."""

    def __init__(self, forward_tokens_per_s: float):
        self.forward_tokens_per_s = forward_tokens_per_s
        self.gate = asyncio.Event()
        self.canary_done = False
        self.score = FakeMethod(self._score)
        self.score_many = FakeMethod(self._score_many)

    def _scores(self, request: PairRequest) -> DocScores:
        raw = np.zeros(len(request.passages), np.float32)
        return DocScores(raw, raw, np.ones(len(raw), np.int64), 10, False, 4096, self.forward_tokens_per_s)

    def _score(self, encoded: FakeResponse):
        if not self.canary_done:
            self.canary_done = True
            return self._scores(encoded.value)

        async def later():
            request = await encoded
            await self.gate.wait()
            return self._scores(request)

        return later()

    async def _score_many(self, parts: list):
        await self.gate.wait()
        return [self._scores(part.request) for part in parts]


def test_pipeline_refuses_at_the_door_with_429_before_any_work_is_sent():
    """Seeded by the canary's forward rate, the pipeline admits what fits in 0.8 x the deadline and
    answers OverloadedError for the rest without calling the tokenizer or scorer for it."""
    tokenizer_calls = []
    tokenizer = type("T", (), {})()
    tokenizer.encode = FakeMethod(lambda request: request)  # the canary
    tokenizer.encode_many = FakeMethod(lambda requests: (tokenizer_calls.extend(requests), [FakeEncoded(r) for r in requests])[1])
    tokenizer.describe = FakeMethod(lambda: {"max_length": 512})
    settings = RerankerSettings(request_deadline_s=10, admission_max_wait_fraction=0.8)
    request = PairRequest(queries=["q"], passages=["x" * 300] * 10)  # about 1040 estimated tokens
    work = estimated_tokens(request, 512)
    # A scorer rate that fits 3 such requests (3.2) in 0.8 x the deadline, not 4.
    scorer = GatedScorer(forward_tokens_per_s=3.2 * work / 8)

    async def scenario():
        pipeline = Pipeline(tokenizer, scorer, settings)
        await pipeline.ensure_ready()
        assert pipeline.admission.rate.per_s() == pytest.approx(scorer.forward_tokens_per_s)
        parts = split_request(request, 10**6, 512)
        running = [asyncio.create_task(pipeline.score(parts)) for _ in range(3)]
        await asyncio.sleep(0)
        calls_before = len(tokenizer_calls)
        with pytest.raises(OverloadedError) as refused:
            await pipeline.score(parts)
        assert len(tokenizer_calls) == calls_before  # nothing was sent for the refused request
        assert refused.value.retry_after_s >= 1
        scorer.gate.set()
        await asyncio.gather(*running)
        assert pipeline.admission.in_flight == 0 and pipeline.admission.backlog == 0
        await pipeline.score(parts)  # room again

    asyncio.run(scenario())
