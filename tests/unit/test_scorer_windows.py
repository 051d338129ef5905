"""The Scorer's batch windows on a simulated GPU, without Ray: the next window is launched while the
previous one runs on the device, at most WINDOWS_IN_FLIGHT at once, and callers of one window are
independent (a cancelled one does not cancel the others). Ordering of events, no timing thresholds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.scorer import WINDOWS_IN_FLIGHT, Scorer
from reranker.backends.simulated import SimulatedGpuBackend
from reranker.settings import RerankerSettings

QUERY = "what is the capital of france"
# The simulated GPU's batching (the GPU's defaults), restored after a test changes the class's batch queue.
GPU_BATCHING = {"max_batch_tokens": 32768, "max_batch_size": 256, "batch_window_forwards": 2}
PASSAGES = [
    ["paris is the capital and most populous city of france", "berlin ist die hauptstadt von deutschland"],
    ["столица россии москва", "東京は日本の首都です", ""],
    ["the quick brown fox jumps over the lazy dog", "madrid es la capital de españa"],
]


class RecordingBackend(SimulatedGpuBackend):
    """The simulated GPU, noting the order of launches and finished fetches."""

    def __init__(self, events: list, **kwargs):
        super().__init__(launch_torch_calls=2, launch_python_s_per_call=1e-6, launch_native_s_per_call=1e-6, **kwargs)
        self.events = events
        self.shapes: list[tuple[int, int]] = []

    def launch(self, *arrays):
        self.events.append("launch")
        self.shapes.append(arrays[0].shape)
        return super().launch(*arrays)

    def fetch(self, launched):
        logits = super().fetch(launched)
        self.events.append("fetched")
        return logits


@pytest.fixture(scope="module")
def loop():
    """One event loop for the module: Serve's batch queue binds to the first loop that uses it.

    That queue is made lazily, once per decorated method, and kept on the class: afterwards its
    task is stopped and the queue dropped, so the class pickles again (tests/assets/test_k8s.py
    builds the app in this process).
    """
    loop = asyncio.new_event_loop()
    yield loop
    lazy = Scorer.func_or_class._score_batch.set_max_batch_size.__self__  # Serve's _LazyBatchQueueWrapper
    task = lazy._queue._handle_batch_task if lazy._queue is not None else None
    if task is not None:
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    loop.close()
    lazy._queue = None


@pytest.fixture
def scorer_and_parts(tiny_model_dir, tiny_tokenizer, monkeypatch):
    from ray.serve import batching

    from reranker.tokenization import PairEncoder

    # Serve's batcher compares its size with the replica's max_ongoing_requests, which only a replica has.
    monkeypatch.setattr(batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)

    scorer = Scorer.func_or_class(RerankerSettings(model=str(tiny_model_dir), backend="simulated-gpu"))
    events: list = []
    # Each window occupies the simulated device for 0.3 s, far longer than a launch.
    scorer.core.backend = RecordingBackend(events, gpu_fixed_s=0.3)
    encoder = PairEncoder(tiny_tokenizer, scorer.core.max_length, 64)
    parts = [encoder.encode(QUERY, passages) for passages in PASSAGES]
    return scorer, parts, events


def expected_scores(scorer, part) -> np.ndarray:
    from reranker.batching import max_by_doc

    return max_by_doc(part.doc_index, part.num_docs, scorer.core.score_pairs(part).raw)


async def wait_for(predicate, what: str, timeout_s: float = 30):
    async def poll():
        while not predicate():
            await asyncio.sleep(0.002)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def test_the_next_window_launches_while_the_previous_one_runs(scorer_and_parts, loop):
    scorer, parts, events = scorer_and_parts

    async def scenario():
        first = asyncio.ensure_future(scorer.score(parts[0]))
        await wait_for(lambda: events.count("launch") == 1, "the first window's launch")
        second = asyncio.ensure_future(scorer.score(parts[1]))
        return await asyncio.gather(first, second)

    results = loop.run_until_complete(scenario())
    # Two windows; the second was launched before the first one's fetch came back.
    assert events == ["launch", "launch", "fetched", "fetched"]
    for part, result in zip(parts, results):
        np.testing.assert_array_equal(result.raw, expected_scores(scorer, part))


def test_at_most_windows_in_flight_are_launched(scorer_and_parts, loop):
    scorer, parts, events = scorer_and_parts
    assert WINDOWS_IN_FLIGHT == 2

    async def scenario():
        tasks = []
        for index, part in enumerate(parts):
            tasks.append(asyncio.ensure_future(scorer.score(part)))
            if index < WINDOWS_IN_FLIGHT:
                await wait_for(lambda n=index + 1: events.count("launch") == n, f"launch {index + 1}")
        return await asyncio.gather(*tasks)

    results = loop.run_until_complete(scenario())
    # The third window waits for a free slot: it launches only after the first window is fetched.
    assert events.index("fetched") < [i for i, e in enumerate(events) if e == "launch"][2]
    for part, result in zip(parts, results):
        np.testing.assert_array_equal(result.raw, expected_scores(scorer, part))


def test_a_cancelled_caller_does_not_cancel_its_window(scorer_and_parts, loop):
    scorer, parts, events = scorer_and_parts

    async def scenario():
        # Both parts arrive within one batch window, so they share one launch.
        kept = asyncio.ensure_future(scorer.score(parts[0]))
        dropped = asyncio.ensure_future(scorer.score(parts[1]))
        await wait_for(lambda: events.count("launch") == 1, "the shared window's launch")
        dropped.cancel()
        result = await kept
        with pytest.raises(asyncio.CancelledError):
            await dropped
        return result

    result = loop.run_until_complete(scenario())
    assert events == ["launch", "fetched"]
    np.testing.assert_array_equal(result.raw, expected_scores(scorer, parts[0]))


def test_a_part_over_the_budget_is_split_and_reassembled(scorer_and_parts, loop):
    scorer, parts, events = scorer_and_parts
    from reranker.messages import EncodedPairs
    from reranker.settings import BatchSettings

    merged = EncodedPairs.concat(parts)
    expected = expected_scores(scorer, merged)
    budget = int(merged.lengths.max()) * 2
    scorer.reconfigure(BatchSettings(max_batch_tokens=budget, max_batch_size=256).model_dump())
    try:
        result = loop.run_until_complete(scorer.score(merged))
    finally:  # the batch queue's settings belong to the class: restore them for other tests
        scorer.reconfigure(GPU_BATCHING)
    np.testing.assert_array_equal(result.raw, expected)
    assert result.raw.shape == (merged.num_docs,)


def test_a_window_of_two_forwards_sorts_its_pairs_by_length_before_cutting_them(scorer_and_parts, tiny_tokenizer, loop):
    """Two parts, each a short and a long pair, in one window of two forwards' worth: the shorts go
    in one forward and the longs in the other, so the window pads less than two windows of one."""
    from reranker.batching import round_up
    from reranker.tokenization import PairEncoder

    scorer, _, events = scorer_and_parts
    encoder = PairEncoder(tiny_tokenizer, scorer.core.max_length, 64)
    long_text = "the quick brown fox jumps over the lazy dog " * 4
    parts = [encoder.encode(QUERY, ["paris", long_text]), encoder.encode(QUERY, ["berlin", long_text + "again"])]
    short = round_up(int(max(p.lengths[0] for p in parts)), 8)
    longs = [round_up(int(p.lengths[1]), 8) for p in parts]
    long = max(longs)
    expected = [expected_scores(scorer, part) for part in parts]

    def window_of(forwards: int) -> list:
        scorer.core.backend.shapes.clear()
        scorer.reconfigure({"max_batch_tokens": 2 * long, "max_batch_size": 256, "batch_window_forwards": forwards})

        async def both():
            return await asyncio.gather(scorer.score(parts[0]), scorer.score(parts[1]))

        for result, want in zip(loop.run_until_complete(both()), expected):
            np.testing.assert_array_equal(result.raw, want)
        return sorted(scorer.core.backend.shapes)

    try:
        # One forward's worth per window: each part is its own window, padded to its long pair.
        assert window_of(1) == sorted((2, padded) for padded in longs)
        # Two forwards' worth: one window, the shorts together and the longs together.
        assert window_of(2) == [(2, short), (2, long)]
        assert 2 * short + 2 * long < 2 * sum(longs)
    finally:
        scorer.reconfigure(GPU_BATCHING)


def test_an_idle_gpu_scorer_launches_at_once_and_a_busy_one_waits_for_more_parts(scorer_and_parts, loop):
    """A scorer that replays graphs on a GPU waits for more parts only while a window is in flight:
    with a wait of 10 s (the most the settings allow), a part reaching it idle is launched at once,
    and the parts arriving while a window runs share the next one."""
    scorer, parts, events = scorer_and_parts
    scorer.launches_when_idle = True  # as launches_when_idle() decides for graph replays on a GPU
    scorer.reconfigure({**GPU_BATCHING, "batch_wait_timeout_s": 10.0})

    async def scenario():
        first = asyncio.ensure_future(scorer.score(parts[0]))
        # Idle: launched long before the 10 s wait would end (the device then holds it 0.3 s).
        await wait_for(lambda: events.count("launch") == 1, "the idle scorer's launch", timeout_s=5)
        assert scorer.windows_running == 1
        scorer.reconfigure({**GPU_BATCHING, "batch_wait_timeout_s": 1.0})
        later = [asyncio.ensure_future(scorer.score(part)) for part in parts[1:]]
        await asyncio.sleep(0.1)
        late = asyncio.ensure_future(scorer.score(parts[0]))
        return await asyncio.gather(first, *later, late)

    try:
        results = loop.run_until_complete(scenario())
    finally:
        scorer.launches_when_idle = False
        scorer.reconfigure(GPU_BATCHING)
    # The three parts that arrived while the first window ran went out together, in one window.
    assert events.count("launch") == 2, events
    assert scorer.core.backend.shapes[1][0] == sum(part.num_pairs for part in [*parts[1:], parts[0]])
    for part, result in zip([*parts, parts[0]], results):
        np.testing.assert_array_equal(result.raw, expected_scores(scorer, part))
    assert scorer.windows_running == 0


def test_an_idle_scorer_that_launches_eagerly_still_waits_for_more_parts(scorer_and_parts, loop):
    """Without graphs (the fixture's scorer: eager launches) an idle scorer waits out its batch
    window: a part arriving 0.1 s after the first, within a 1 s wait, shares its launch."""
    scorer, parts, events = scorer_and_parts
    assert not scorer.launches_when_idle
    scorer.reconfigure({**GPU_BATCHING, "batch_wait_timeout_s": 1.0})

    async def scenario():
        first = asyncio.ensure_future(scorer.score(parts[0]))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(scorer.score(parts[1]))
        return await asyncio.gather(first, second)

    try:
        results = loop.run_until_complete(scenario())
    finally:
        scorer.reconfigure(GPU_BATCHING)
    assert events == ["launch", "fetched"]
    assert scorer.core.backend.shapes[0][0] == parts[0].num_pairs + parts[1].num_pairs
    for part, result in zip(parts, results):
        np.testing.assert_array_equal(result.raw, expected_scores(scorer, part))


def test_only_graph_replays_on_a_gpu_launch_when_idle(tiny_model_dir):
    from deployments.scorer import launches_when_idle
    from reranker.scoring import ModelScorer

    def core(**settings) -> ModelScorer:
        return ModelScorer(RerankerSettings(model=str(tiny_model_dir), **settings))

    assert launches_when_idle(core(backend="simulated-gpu", cuda_graphs=True))
    assert not launches_when_idle(core(backend="simulated-gpu"))
    assert not launches_when_idle(core(backend="torch", device="cpu"))
