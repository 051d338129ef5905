"""The fan-out engine: one request through tokenizer and scorer, in parts, under a deadline.

A large request is split into parts of about one scorer batch budget each, so its pairs spread
over scorer replicas and batches. Each part is tokenized, then scored; the handles are by value, so
the encoded pairs pass through the ingress on their way to the scorer. Under load, parts of
concurrent requests share one tokenizer call and one scorer call (reranker/coalescing.py). A part
whose replica dies is retried once. The readiness canary lives here too: a request never waits on
an absent model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import time
from typing import Callable, Optional

import numpy as np
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from reranker.admission import Admission, Ticket
from reranker.batching import padded_tokens, split_documents
from reranker.coalescing import Coalescer
from reranker.errors import DeadlineExceededError, NotReadyError, RerankerError, ScorerUnavailableError
from reranker.messages import DocScores, EncodedPairs, PairRequest
from reranker.settings import RerankerSettings

logger = logging.getLogger("ray.serve")

REPLICA_LOST = (ActorDiedError, ActorUnavailableError, RayActorError)
# Characters per token, pessimistic for multilingual text; only used to size request parts.
CHARS_PER_TOKEN_ESTIMATE = 3
CANARY_TIMEOUT_S = 3
DESCRIBE_TIMEOUT_S = 5
EXCEPTION_LINE = re.compile(r"^\s*(?:[\w]+\.)*(\w+(?:Error|Exception)): (.+)$")


def cancel_quietly(responses) -> None:
    """Cancels handle calls, best effort.

    `DeploymentResponse.cancel()` re-raises the error of a call that already failed (a lost replica,
    a deployment that failed to deploy); that must not replace the outcome being reported.
    """
    for response in responses:
        try:
            response.cancel()
        except Exception:  # noqa: BLE001
            pass


async def call_and_cancel(method, items: list) -> list:
    """One handle call with a list of items; cancelling the wait cancels the call on its replica."""
    response = method.remote(items)
    try:
        return await response
    except asyncio.CancelledError:
        cancel_quietly([response])
        raise


def scorer_calls(
    scorer: DeploymentHandle,
    budget: Callable[[], int],
    calls_in_flight: float,
    on_call: Optional[Callable[[int], None]] = None,
) -> Coalescer:
    """The scorer's calls as the ingress makes them: parts in padded tokens, `score_many` per call."""
    return Coalescer(
        lambda parts: call_and_cancel(scorer.score_many, parts),
        lambda pairs: padded_tokens(pairs.lengths),
        budget,
        calls_in_flight,
        on_call,
    )


def last_exception_line(message: str, limit: int = 600) -> str:
    """The final 'SomeError: text' line of a Serve status message (a traceback), module path dropped."""
    matches = [EXCEPTION_LINE.match(line) for line in message.splitlines()]
    found = [m for m in matches if m]
    if not found:
        return message.strip()[-limit:]
    name, text = found[-1].groups()
    return f"{name}: {text.strip()}"[:limit]


def passage_token_estimates(request: PairRequest, max_length: int) -> list[int]:
    """Estimated tokens of each (query, passage) pair, from characters, before any tokenization."""
    per_doc_cap = max_length * (request.max_chunks if request.chunk else 1)
    query_estimate = max(len(q) for q in request.queries) // CHARS_PER_TOKEN_ESTIMATE + 3
    return [min(len(text) // CHARS_PER_TOKEN_ESTIMATE + 1, per_doc_cap) + query_estimate for text in request.passages]


def estimated_tokens(request: PairRequest, max_length: int) -> int:
    """The work of a request part in estimated tokens: the unit of admission's backlog and rate."""
    return sum(passage_token_estimates(request, max_length))


def split_request(request: PairRequest, budget_tokens: int, max_length: int) -> list[PairRequest]:
    """Contiguous parts of about `budget_tokens` estimated tokens each (at least one document each)."""
    ranges = split_documents(passage_token_estimates(request, max_length), budget_tokens)
    if len(ranges) == 1:
        return [request]
    return [
        dataclasses.replace(
            request,
            passages=request.passages[start:end],
            query_of_passage=request.query_of_passage[start:end] if request.query_of_passage else None,
        )
        for start, end in ranges
    ]


class Pipeline:
    """Scores PairRequests through the tokenizer and scorer deployments; knows whether they are ready."""

    def __init__(
        self,
        tokenizer: DeploymentHandle,
        scorer: DeploymentHandle,
        settings: RerankerSettings,
        on_call: Optional[Callable[[str, int], None]] = None,
    ):
        """`on_call(deployment, parts)` is told the size of every coalesced tokenizer and scorer call."""
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.settings = settings
        # Learned from the scorer (each answer carries its live budget) and the tokenizer (canary).
        self.part_budget_tokens = settings.max_batch_tokens
        self.max_length = settings.max_length or 512
        on_call = on_call or (lambda deployment, parts: None)
        calls_in_flight = settings.handle_calls_in_flight or math.inf  # unset: nothing ever waits
        # Parts, and the calls that carry several of them, are sized to one scorer window.
        self.encode_calls = Coalescer(
            lambda parts: call_and_cancel(self.tokenizer.encode_many, parts),
            lambda part: estimated_tokens(part, self.max_length),
            lambda: self.part_budget_tokens,
            calls_in_flight,
            lambda parts: on_call("Tokenizer", parts),
        )
        self.score_calls = scorer_calls(
            scorer, lambda: self.part_budget_tokens, calls_in_flight, lambda parts: on_call("Scorer", parts)
        )
        self.ready = False
        self.not_ready_reason = "The model has not scored a canary pair yet."
        self._canary_lock = asyncio.Lock()
        # Refuses at the door what could not finish within the deadline (reranker/admission.py).
        self.admission = Admission(
            settings.request_deadline_s * settings.admission_max_wait_fraction, deadline_s=settings.request_deadline_s
        )

    def split(self, request: PairRequest) -> list[PairRequest]:
        return split_request(request, self.part_budget_tokens, self.max_length)

    async def score(self, parts: list[PairRequest]) -> DocScores:
        """Scores the parts of one request concurrently; the whole request's scores in document order."""
        if not self.ready:
            await self.ensure_ready()
        work = [estimated_tokens(part, self.max_length) for part in parts]
        ticket = self.admission.admit(sum(work))  # 429 if it could not finish in time, 413 if far from it even alone
        timeout_s = self.settings.request_deadline_s
        tasks = [asyncio.ensure_future(self._score_part(part, ticket, w)) for part, w in zip(parts, work)]
        try:
            results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceededError(
                f"The request did not finish within request_deadline_s ({timeout_s} s)."
            ) from None
        finally:
            # Past the deadline, after a failed part or a client gone: the other parts stop. One still
            # queued here is never sent; a call whose every part has stopped is cancelled on its replica.
            for task in tasks:
                task.cancel()
            ticket.release()
        return DocScores.concat(results)

    async def _score_part(self, part: PairRequest, ticket: Ticket, work: int) -> DocScores:
        """Tokenizer then scorer, each in a call it may share with other requests' parts; retried once if a replica dies."""
        for attempt in (1, 2):
            try:
                encoded: EncodedPairs = await self.encode_calls.submit(part)
                result: DocScores = await self.score_calls.submit(encoded)
            except RerankerError:
                raise
            except DeploymentUnavailableError as exc:
                self.ready = False
                raise NotReadyError("The model is not available yet; see /ready.", retry_after_s=5) from exc
            except REPLICA_LOST as exc:
                if attempt == 2:
                    self.ready = False
                    raise ScorerUnavailableError(
                        "A scorer replica was lost and the retry failed; try again shortly.", retry_after_s=2
                    ) from exc
                logger.warning("Replica lost while scoring (%s); retrying the part once.", type(exc).__name__)
                continue
            if result.max_batch_tokens:
                self.part_budget_tokens = result.max_batch_tokens
            ticket.part_done(work)
            return result

    # ----- readiness ---------------------------------------------------------------------------

    async def ensure_ready(self) -> None:
        """Scores the canary unless it has already passed; raises NotReadyError with the reason otherwise."""
        if not self.ready:
            async with self._canary_lock:
                if not self.ready:
                    await self._run_canary()
        if not self.ready:
            raise NotReadyError(f"The model is not ready: {self.not_ready_reason}", retry_after_s=5)

    async def _run_canary(self) -> None:
        canary = PairRequest(queries=["readiness canary"], passages=["canary passage"])
        encoded = scored = None
        try:
            described = await asyncio.wait_for(self.tokenizer.describe.remote(), timeout=CANARY_TIMEOUT_S)
            self.max_length = described["max_length"]
            encoded = self.tokenizer.encode.remote(canary)
            scored = self.scorer.score.remote(encoded)
            result = await asyncio.wait_for(scored, timeout=CANARY_TIMEOUT_S)
            if result.raw.shape == (1,) and np.isfinite(result.raw).all():
                if result.max_batch_tokens:
                    self.part_budget_tokens = result.max_batch_tokens
                # Until admission has measured the service, the scorer's start-up forward rate stands in.
                self.admission.rate.seed(result.forward_tokens_per_s)
                self.ready = True
                self.not_ready_reason = ""
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say why
            cancel_quietly(response for response in (encoded, scored) if response is not None)
            self.not_ready_reason = await self._deployment_problem() or f"Canary failed: {type(exc).__name__}."

    async def _deployment_problem(self) -> str:
        """The Serve status message of an unhealthy tokenizer or scorer, such as a model load error."""
        try:
            deployments = await asyncio.to_thread(app_deployments)
        except Exception:  # noqa: BLE001
            return ""
        for name in ("Scorer", "Tokenizer"):
            info = deployments.get(name)
            if info is None:
                continue
            state = getattr(info.status, "value", str(info.status))
            if state not in ("HEALTHY", "UPSCALING", "DOWNSCALING"):
                return f"{name} is {state}: {last_exception_line(info.message or '')}"
            if state == "UPSCALING" and not info.replica_states.get("RUNNING"):
                return f"{name} is starting (loading the model)."
        return ""

    # ----- /info ---------------------------------------------------------------------------------

    async def describe(self) -> tuple[dict, list[dict]]:
        """The tokenizer's description and each running scorer replica's (sampled, bounded in time).

        A tokenizer that failed to deploy or does not answer in time is NotReadyError (503 with
        Retry-After and the reason /ready gives), as for a rerank request."""
        try:
            tokenizer_info = await asyncio.wait_for(self.tokenizer.describe.remote(), timeout=DESCRIBE_TIMEOUT_S)
        except (DeploymentUnavailableError, asyncio.TimeoutError) as exc:
            reason = await self._deployment_problem() or "the tokenizer did not answer."
            raise NotReadyError(f"The model is not ready: {reason}", retry_after_s=5) from exc
        running = (await running_replicas()).get("Scorer") or 1
        scorers: dict[str, dict] = {}
        deadline = time.monotonic() + DESCRIBE_TIMEOUT_S
        # Handle calls pick replicas at random: 2n + 1 draws find all n replicas almost always.
        for _ in range(2 * max(running, 1) + 1):
            if len(scorers) >= running or time.monotonic() >= deadline:
                break
            try:
                described = await asyncio.wait_for(
                    self.scorer.describe.remote(), timeout=max(deadline - time.monotonic(), 0.01)
                )
            except Exception:  # noqa: BLE001 - report what answered
                break
            scorers[described["replica"]] = described
        return tokenizer_info, list(scorers.values())


async def running_replicas() -> dict[str, int]:
    """RUNNING replicas of each deployment of this application; empty if Serve's controller does not say."""
    try:
        deployments = await asyncio.to_thread(app_deployments)
        return {name: int(info.replica_states.get("RUNNING", 0)) for name, info in deployments.items()}
    except Exception:  # noqa: BLE001 - callers fall back to one replica
        return {}


def app_deployments() -> dict:
    """This application's deployment statuses from Serve's controller (a blocking call)."""
    status = serve.status()
    return status.applications[serve.get_replica_context().app_name].deployments

