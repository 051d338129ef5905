"""HTTP ingress (FastAPI on Ray Serve): validates, fans out to tokenizer and scorer, assembles responses.

Routes: TEI `/rerank`, Cohere/Jina `/v1/rerank`, Cohere `/v2/rerank`, raw pairs `/score`, and
`/health`, `/ready`, `/info`, `/metrics`, `/docs`, `/openapi.json`.
"""

import asyncio
import dataclasses
import hmac
import json
import logging
import re
import time
import uuid
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import __version__
from deployments.batching import split_documents
from deployments.errors import (
    HTTP_ERRORS,
    INTERNAL_ERROR_MESSAGE,
    DeadlineExceededError,
    EmptyInputError,
    NotReadyError,
    PayloadTooLargeError,
    RerankerError,
    ScorerUnavailableError,
    UnauthenticatedError,
    ValidationError,
    error_body,
    error_headers,
)
from deployments.metrics import IngressMetrics
from deployments.metrics_export import node_metrics_text
from deployments.schemas import (
    CohereErrorBody,
    CohereRerankResponse,
    CohereV1RerankRequest,
    CohereV2RerankRequest,
    ErrorBody,
    NotReadyBody,
    ScoreRequest,
    ScoreResponse,
    TEIRank,
    TEIRerankRequest,
)
from deployments.settings import RerankerSettings, load_api_keys
from deployments.responses import (
    document_text,
    last_exception_line,
    ranking,
    score_request_pairs,
    truncation_header,
)
from deployments.tokenization import PairRequest

logger = logging.getLogger("ray.serve")

REPLICA_LOST = (ActorDiedError, ActorUnavailableError, RayActorError)
AUTHENTICATED_ROUTES = {"/rerank", "/v1/rerank", "/v2/rerank", "/score"}
# Lone UTF-16 surrogates: JSON escapes like \ud800 decode to them, and no tokenizer accepts them.
UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters per token, pessimistic for multilingual text; only used to size sub-requests.
CHARS_PER_TOKEN_ESTIMATE = 3
CANARY_TIMEOUT_S = 3

_metrics: Optional[IngressMetrics] = None
_in_flight = {"count": 0}


def ingress_metrics() -> IngressMetrics:
    """The replica's metric objects, created on first use inside the replica (never at import)."""
    global _metrics
    if _metrics is None:
        _metrics = IngressMetrics()
    return _metrics


def local_path(scope) -> str:
    """The request path below the application's route prefix."""
    path, prefix = scope.get("path", ""), scope.get("root_path", "")
    return path[len(prefix):] or "/" if prefix and path.startswith(prefix) else path


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


def check_api_key(authorization: str, keys: list[bytes]) -> None:
    """Raises UnauthenticatedError unless `Authorization: Bearer <key>` names one of `keys`.

    Every key is compared, always, in constant time, so timing does not reveal which one nearly matched.
    """
    scheme, _, token = authorization.partition(" ")
    presented = token.strip().encode("utf-8") if scheme.lower() == "bearer" else b""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    if not matched:
        raise UnauthenticatedError("Missing or invalid API key: send 'Authorization: Bearer <key>'.")


def check_text(text: str, label: str, max_chars: int, limit_name: str) -> None:
    """One query or document against its character limit and for text a tokenizer cannot take."""
    if len(text) > max_chars:
        raise PayloadTooLargeError(f"{label} has {len(text)} characters, over {limit_name} ({max_chars}).")
    if "\x00" in text:
        raise ValidationError(f"{label} contains a null byte.")
    if UNPAIRED_SURROGATE.search(text):
        raise ValidationError(f"{label} contains an unpaired UTF-16 surrogate (invalid Unicode).")


def route_family(path: str) -> str:
    return "cohere" if path.startswith(("/v1/", "/v2/")) else "tei"


def error_response(exc: RerankerError, path: str) -> JSONResponse:
    return JSONResponse(error_body(exc, route_family(path)), status_code=exc.status_code, headers=error_headers(exc))


class RequestContextMiddleware:
    """Per request: id, body-size limit, in-flight gauge, metrics and one JSON access-log line."""

    def __init__(self, app, replica_config: dict):
        self.app = app
        # Filled by the Ingress replica's constructor: max_body_bytes and api_keys.
        self.replica_config = replica_config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        # Ray Serve's proxy puts the client's X-Request-ID (or a new id) in the scope and echoes it back.
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, passages=0, tokens=0, failure_reason=None, text=None)
        path = local_path(scope)
        route = path if path in ROUTES else "other"
        status = {"code": 500}
        limit = self.replica_config["max_body_bytes"]
        metrics = ingress_metrics()
        _in_flight["count"] += 1
        metrics.in_flight.set(_in_flight["count"])

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        received = {"bytes": 0}

        async def receive_wrapper():
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > limit:
                    raise PayloadTooLargeError(f"Request body exceeds max_body_bytes ({limit} bytes).")
            return message

        try:
            rejection = self.reject_before_body(path, headers, limit)
            if rejection is not None:
                state["failure_reason"] = rejection.reason
                await error_response(rejection, path)(scope, receive, send_wrapper)
            else:
                try:
                    await self.app(scope, receive_wrapper, send_wrapper)
                except PayloadTooLargeError as exc:
                    state["failure_reason"] = exc.reason
                    await error_response(exc, path)(scope, receive, send_wrapper)
        finally:
            _in_flight["count"] -= 1
            metrics.in_flight.set(_in_flight["count"])
            elapsed = time.perf_counter() - started
            code = status["code"]
            metrics.requests.inc(tags={"route": route, "status_code": str(code)})
            metrics.request_duration.observe(elapsed, tags={"route": route})
            if code >= 400:
                metrics.failures.inc(tags={"reason": state.get("failure_reason") or reason_for_status(code)})
            logger.info(
                json.dumps(
                    {
                        "event": "access",
                        "request_id": request_id,
                        "method": scope.get("method"),
                        "route": route,
                        "status": code,
                        "latency_ms": round(elapsed * 1000, 2),
                        "passages": state.get("passages", 0),
                        "tokens": state.get("tokens", 0),
                        **({"text": state["text"]} if state.get("text") else {}),
                    },
                    ensure_ascii=False,
                )
            )


    def reject_before_body(self, path: str, headers: dict, limit: int) -> Optional[RerankerError]:
        """API key and declared body size, checked before the body is read or validated."""
        keys = self.replica_config["api_keys"]
        if keys and path in AUTHENTICATED_ROUTES:
            try:
                check_api_key(headers.get("authorization", ""), keys)
            except UnauthenticatedError as exc:
                return exc
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return PayloadTooLargeError(f"Request body exceeds max_body_bytes ({limit} bytes).")
        return None


def reason_for_status(code: int) -> str:
    return {400: "empty", 401: "unauthenticated", 413: "too_large", 422: "validation", 429: "overloaded",
            503: "not_ready", 504: "deadline"}.get(code, "validation" if 400 <= code < 500 else "internal")


app = FastAPI(
    title="Multilingual reranker",
    version=__version__,
    description="Cross-encoder reranking with TEI, Cohere (v1, v2) and Jina compatible routes.",
)


@app.exception_handler(RerankerError)
async def _reranker_error(request: Request, exc: RerankerError):
    request.state.failure_reason = exc.reason
    return error_response(exc, local_path(request.scope))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    problems = []
    for err in exc.errors()[:5]:
        location = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{location}: {err.get('msg', 'invalid')}")
    error = ValidationError("Invalid request: " + "; ".join(problems))
    request.state.failure_reason = error.reason
    return error_response(error, local_path(request.scope))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    # FastAPI turns any error raised while reading the body into 400 "error parsing the body": the
    # body-size limit (raised by the middleware's receive) keeps its 413; bodies json.loads cannot
    # read (invalid UTF-8, nesting past the recursion limit) fail like invalid JSON, with 422.
    if isinstance(exc.__cause__, RerankerError):
        return await _reranker_error(request, exc.__cause__)
    if exc.status_code == 400:
        error = ValidationError("Invalid request: the body is not valid UTF-8 JSON.")
        request.state.failure_reason = error.reason
        return error_response(error, local_path(request.scope))
    error = HTTP_ERRORS.get(exc.status_code, RerankerError)(
        f"{request.method} {local_path(request.scope)}: {exc.detail}", headers=exc.headers
    )
    request.state.failure_reason = error.reason
    return error_response(error, local_path(request.scope))


_replica_config = {"max_body_bytes": RerankerSettings().max_body_bytes, "api_keys": []}
app.add_middleware(RequestContextMiddleware, replica_config=_replica_config)

TEI_ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 413, 422, 429, 503, 504)}
COHERE_ERRORS = {code: {"model": CohereErrorBody} for code in (400, 401, 413, 422, 429, 503, 504)}
ROUTES = {"/rerank", "/v1/rerank", "/v2/rerank", "/score", "/health", "/ready", "/info", "/metrics"}


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    """HTTP front door: validation, limits, API keys, fan-out, sorted responses, health and metrics."""

    def __init__(self, tokenizer: DeploymentHandle, scorer: DeploymentHandle, settings: RerankerSettings):
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.settings = settings
        self.model_names = {settings.model, settings.model.rstrip("/").split("/")[-1], *settings.model_aliases}
        self.ready = False
        self.not_ready_reason = "The model has not scored a canary pair yet."
        self._canary_lock = asyncio.Lock()
        _replica_config.update(
            max_body_bytes=settings.max_body_bytes, api_keys=[key.encode("utf-8") for key in load_api_keys()]
        )
        ingress_metrics()

    # ----- helpers -------------------------------------------------------------------------

    def check_model(self, model: Optional[str]) -> None:
        if model is not None and model not in self.model_names:
            raise ValidationError(
                f"Unknown model '{model[:200]}'. This server serves '{self.settings.model}'"
                + (f" (aliases: {', '.join(sorted(self.model_names - {self.settings.model}))})" if len(self.model_names) > 1 else "")
                + "."
            )

    def check_texts(self, query_texts: list[str], documents: list[str]) -> None:
        """Limits and emptiness, before any tokenization."""
        s = self.settings
        if not documents:
            raise EmptyInputError("No documents to rank: the documents list is empty.")
        if len(documents) > s.max_documents:
            raise PayloadTooLargeError(f"{len(documents)} documents exceed max_documents ({s.max_documents}).")
        for query in query_texts:
            if not query.strip():
                raise EmptyInputError("The query is empty.")
            check_text(query, "The query", s.max_query_chars, "max_query_chars")
        for index, text in enumerate(documents):
            check_text(text, f"Document {index}", s.max_document_chars, "max_document_chars")

    def deadline(self) -> float:
        return time.monotonic() + self.settings.request_deadline_s

    async def score_documents(self, request: Request, pair_request: PairRequest):
        """Scores one request through tokenizer and scorer, split into parts of about one token budget.

        Returns (raw, normalized, chunks_per_doc, total_tokens, query_truncated) over all documents.
        """
        started = time.perf_counter()
        if not self.ready:
            await self.ensure_ready()
        s = self.settings
        per_doc_cap = s.max_length or 512
        if pair_request.chunk:
            per_doc_cap *= pair_request.max_chunks
        query_estimate = max(len(q) for q in pair_request.queries) // CHARS_PER_TOKEN_ESTIMATE + 3
        estimates = [min(len(text) // CHARS_PER_TOKEN_ESTIMATE + 1, per_doc_cap) + query_estimate for text in pair_request.passages]
        ranges = split_documents(estimates, s.max_batch_tokens)
        parts = [
            dataclasses.replace(
                pair_request,
                passages=pair_request.passages[start:end],
                query_of_passage=pair_request.query_of_passage[start:end] if pair_request.query_of_passage else None,
            )
            for start, end in ranges
        ]
        ingress_metrics().stage_duration.observe(time.perf_counter() - started, tags={"stage": "validation"})
        responses: list = []
        remaining = max(self.deadline() - time.monotonic(), 0.001)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(self._score_part(part, responses) for part in parts)), timeout=remaining
            )
        except asyncio.TimeoutError:
            raise DeadlineExceededError(
                f"The request did not finish within request_deadline_s ({s.request_deadline_s} s)."
            ) from None
        finally:
            cancel_quietly(responses)
        raw = np.concatenate([r.raw for r in results])
        normalized = np.concatenate([r.normalized for r in results])
        chunks = np.concatenate([r.chunks_per_doc for r in results])
        tokens = sum(r.total_tokens for r in results)
        truncated = any(r.query_truncated for r in results)
        request.state.passages = len(pair_request.passages)
        request.state.tokens = tokens
        if self.settings.log_text:  # a debug setting: text stays out of logs otherwise
            request.state.text = {"queries": pair_request.queries, "passages": pair_request.passages}
        for count in chunks.tolist():
            ingress_metrics().chunks_per_document.observe(count)
        return raw, normalized, chunks, tokens, truncated

    async def _score_part(self, part: PairRequest, responses: list):
        """Tokenizer then scorer, chained without a round trip through here; retried once if a replica dies."""
        for attempt in (1, 2):
            encoded = self.tokenizer.encode.remote(part)
            scored = self.scorer.score.remote(encoded)
            responses.extend((encoded, scored))
            try:
                return await scored
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

    async def run(self, request: Request, handler):
        """One error path for every route: project errors map to their status, others to a generic 500."""
        try:
            return await handler()
        except RerankerError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Unhandled error in request %s", getattr(request.state, "request_id", "?"))
            exc = RerankerError(INTERNAL_ERROR_MESSAGE)
            request.state.failure_reason = exc.reason
            return error_response(exc, local_path(request.scope))

    def respond(self, content, headers: Optional[dict] = None, started: Optional[float] = None) -> JSONResponse:
        response = JSONResponse(content, headers=headers)
        if started is not None:
            ingress_metrics().stage_duration.observe(time.perf_counter() - started, tags={"stage": "response"})
        return response

    # ----- rerank routes -------------------------------------------------------------------

    @app.post(
        "/rerank",
        response_model=None,
        responses={200: {"model": list[TEIRank]}, **TEI_ERRORS},
        summary="Rerank texts against a query (Hugging Face TEI format)",
    )
    async def rerank_tei(self, request: Request, body: TEIRerankRequest):
        async def handle():
            self.check_texts([body.query], body.texts)
            raw, normalized, _, _, truncated = await self.score_documents(
                request,
                PairRequest(
                    queries=[body.query],
                    passages=body.texts,
                    chunk=self.settings.long_passage_mode == "chunk",
                    max_chunks=self.settings.max_chunks_per_doc,
                    truncate=body.truncate,
                    truncation_direction=body.truncation_direction.lower(),
                ),
            )
            started = time.perf_counter()
            scores = raw if body.raw_scores else normalized
            order = ranking(scores, body.top_n)
            results = []
            for index in order:
                item = {"index": int(index), "score": float(scores[index])}
                if body.return_text:
                    item["text"] = body.texts[index]
                results.append(item)
            return self.respond(results, truncation_header(truncated), started)

        return await self.run(request, handle)

    @app.post(
        "/v1/rerank",
        response_model=None,
        responses={200: {"model": CohereRerankResponse}, **COHERE_ERRORS},
        summary="Rerank documents (Cohere v1 and Jina format)",
    )
    async def rerank_v1(self, request: Request, body: CohereV1RerankRequest):
        return await self.run(request, lambda: self.rerank_cohere(request, body, api_version="1"))

    @app.post(
        "/v2/rerank",
        response_model=None,
        responses={200: {"model": CohereRerankResponse}, **COHERE_ERRORS},
        summary="Rerank documents (Cohere v2 format; legacy v1 fields honoured)",
    )
    async def rerank_v2(self, request: Request, body: CohereV2RerankRequest):
        return await self.run(request, lambda: self.rerank_cohere(request, body, api_version="2"))

    async def rerank_cohere(self, request: Request, body, api_version: str):
        self.check_model(body.model)
        texts = [document_text(doc, body.rank_fields, index) for index, doc in enumerate(body.documents)]
        self.check_texts([body.query], texts)
        max_tokens_per_doc = getattr(body, "max_tokens_per_doc", None)
        chunked = body.max_chunks_per_doc is not None or self.settings.long_passage_mode == "chunk" or max_tokens_per_doc is not None
        raw, normalized, _, tokens, truncated = await self.score_documents(
            request,
            PairRequest(
                queries=[body.query],
                passages=texts,
                chunk=chunked,
                max_chunks=body.max_chunks_per_doc or self.settings.max_chunks_per_doc,
                max_tokens_per_doc=max_tokens_per_doc,
            ),
        )
        started = time.perf_counter()
        results = []
        for index in ranking(normalized, body.top_n):
            item = {"index": int(index), "relevance_score": float(normalized[index])}
            if body.return_documents:
                item["document"] = {"text": texts[index]}
            results.append(item)
        warnings = ["The query was truncated to max_query_tokens."] if truncated else []
        content = {
            "id": getattr(request.state, "request_id", uuid.uuid4().hex),
            "results": results,
            "meta": {
                "api_version": {"version": api_version},
                "billed_units": {"search_units": 1},
                "warnings": warnings,
            },
            "model": self.settings.model,
            "usage": {"total_tokens": int(tokens)},
        }
        return self.respond(content, truncation_header(truncated), started)

    @app.post(
        "/score",
        response_model=None,
        responses={200: {"model": ScoreResponse}, **TEI_ERRORS},
        summary="Score raw (query, passage) pairs in input order",
    )
    async def score_pairs(self, request: Request, body: ScoreRequest):
        async def handle():
            queries, documents = score_request_pairs(body)
            unique = list(dict.fromkeys(queries))
            position = {query: i for i, query in enumerate(unique)}
            self.check_texts(unique, documents)
            raw, normalized, _, tokens, truncated = await self.score_documents(
                request,
                PairRequest(
                    queries=unique,
                    passages=documents,
                    query_of_passage=[position[q] for q in queries],
                    truncate=body.truncate,
                ),
            )
            started = time.perf_counter()
            scores = [
                {"index": i, "score": float(normalized[i]), "raw_score": float(raw[i])} for i in range(len(documents))
            ]
            content = {"scores": scores, "model": self.settings.model, "usage": {"total_tokens": int(tokens)}}
            return self.respond(content, truncation_header(truncated), started)

        return await self.run(request, handle)

    # ----- operations ----------------------------------------------------------------------

    @app.get("/health", summary="Liveness: the ingress is serving")
    async def health(self):
        return {"status": "ok"}

    @app.get(
        "/ready",
        responses={503: {"model": NotReadyBody}},
        summary="Readiness: 200 once a canary pair has been scored end to end",
    )
    async def ready_check(self, request: Request):
        try:
            await self.ensure_ready()
        except NotReadyError:
            return JSONResponse(
                {"status": "not_ready", "reason": self.not_ready_reason}, status_code=503, headers={"Retry-After": "5"}
            )
        return {"status": "ready"}

    async def ensure_ready(self) -> None:
        """Scores the canary unless it has already passed; a request never waits on an absent model."""
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
            encoded = self.tokenizer.encode.remote(canary)
            scored = self.scorer.score.remote(encoded)
            result = await asyncio.wait_for(scored, timeout=CANARY_TIMEOUT_S)
            if result.raw.shape == (1,) and np.isfinite(result.raw).all():
                self.ready = True
                self.not_ready_reason = ""
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say why
            cancel_quietly(response for response in (encoded, scored) if response is not None)
            self.not_ready_reason = await self._deployment_problem() or f"Canary failed: {type(exc).__name__}."

    async def _deployment_problem(self) -> str:
        """The Serve status message of an unhealthy tokenizer or scorer, such as a model load error."""
        try:
            status = await asyncio.to_thread(serve.status)
            app_name = serve.get_replica_context().app_name
            deployments = status.applications[app_name].deployments
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

    @app.get("/info", summary="Model, score definition, limits, and each scorer's device and dtype")
    async def info(self):
        tokenizer_info = await self.tokenizer.describe.remote()
        scorers = {}
        for _ in range(6):
            try:
                described = await asyncio.wait_for(self.scorer.describe.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - report what answered
                break
            scorers[described["replica"]] = described
        head = next(iter(scorers.values()), {})
        return {
            "model_id": self.settings.model,
            "revision": self.settings.revision,
            "aliases": sorted(self.model_names),
            "num_labels": head.get("num_labels"),
            "score": head.get("score"),
            "max_length": tokenizer_info["max_length"],
            "long_passage_mode": self.settings.long_passage_mode,
            "max_chunks_per_doc": self.settings.max_chunks_per_doc,
            "limits": {
                "max_documents": self.settings.max_documents,
                "max_document_chars": self.settings.max_document_chars,
                "max_query_chars": self.settings.max_query_chars,
                "max_body_bytes": self.settings.max_body_bytes,
                "request_deadline_s": self.settings.request_deadline_s,
            },
            "scorers": list(scorers.values()),
            "tokenizer": tokenizer_info,
            "version": __version__,
        }

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics of every replica on this node")
    async def metrics(self):
        text = await asyncio.to_thread(node_metrics_text)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")
