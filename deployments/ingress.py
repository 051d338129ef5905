"""Ingress deployment (CPU): the HTTP routes. Each rerank route maps its body to pairs, scores
them through the pipeline, and answers with its family's typed response.

Routes: the route table's rerank routes (TEI's and Infinity/vLLM's `/rerank`, Cohere/Jina
`/v1/rerank`, Cohere `/v2/rerank`, `/score`, Weaviate's `/weaviate/rerank`), and `/health`,
`/ready`, `/info`, `/metrics`, `/docs`, `/openapi.json`, Weaviate's `/weaviate/.well-known/ready`,
`/weaviate/.well-known/live` and `/weaviate/meta`.
gRPC (Serve's gRPC proxy routes a call to the method named like the RPC): TEI's `tei.v1.Rerank`
service, `Rerank` and `RerankStream`, on the same path as `/rerank`.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations as objects.

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.serve import Deployment
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from reranker import __version__
from reranker.api import RERANK_ROUTES, ApiContext, Route, tei_grpc, truncation_header, weaviate
from reranker.api.tei import tei_info
from reranker.errors import ERROR_MODELS, NotReadyBody, NotReadyError
from reranker.grpc_server import CallState, GrpcCalls, add_trailing_metadata
from reranker.messages import DocScores, PairRequest
from reranker.metrics import IngressStageMetrics
from reranker.metrics_export import node_metrics_text
from reranker.pipeline import Pipeline, running_replicas
from reranker.proto import tei_pb2
from reranker.server import create_app
from reranker.settings import RerankerSettings
from reranker.validation import check_pair_request

ERROR_STATUSES = (400, 401, 413, 422, 429, 503, 504)


class Ingress:
    """HTTP and gRPC front door: validation, limits, fan-out to tokenizer and scorer, typed answers, health and metrics."""

    def __init__(self, tokenizer: DeploymentHandle, scorer: DeploymentHandle, settings: RerankerSettings):
        self.settings = settings
        # By value: Serve's inter-deployment gRPC instead of Ray actor calls and object refs. With
        # the scorer's batch windows it halved a handle caller's CPU per scorer call (5.1 -> 2.7 ms,
        # simulated GPU on 2 cores, benchmarks/RESULTS.md section 7); the tokenizer's answer then
        # passes through here on its way to the scorer.
        self.metrics = IngressStageMetrics()
        self.pipeline = Pipeline(
            tokenizer.options(_by_reference=False),
            scorer.options(_by_reference=False),
            settings,
            on_call=lambda deployment, parts: self.metrics.parts_per_call.observe(parts, tags={"callee": deployment}),
        )
        self.model_names = frozenset(
            {settings.model, settings.model.rstrip("/").split("/")[-1], *settings.model_aliases}
        )
        self.grpc_calls = GrpcCalls()

    async def score_pairs(self, pair_request: PairRequest, state, started: float) -> DocScores:
        """Validates, splits and scores one request's pairs (HTTP and gRPC); notes its size in `state`."""
        check_pair_request(pair_request, self.settings)
        parts = self.pipeline.split(pair_request)
        self.metrics.stage_duration.observe(time.perf_counter() - started, tags={"stage": "validation"})
        scores = await self.pipeline.score(parts)
        state.passages = len(pair_request.passages)
        state.tokens = scores.total_tokens
        if self.settings.log_text:  # a debug setting: text stays out of logs otherwise
            state.text = {"queries": pair_request.queries, "passages": pair_request.passages}
        for count in scores.chunks_per_doc.tolist():
            self.metrics.chunks_per_document.observe(count)
        return scores

    async def rerank(self, request: Request, route: Route, body) -> Response:
        """One rerank request of any family: validate, split, score, answer."""
        started = time.perf_counter()
        context = ApiContext(self.settings, self.model_names, request.state.request_id)
        pair_request = route.api.to_pair_request(body, context)
        scores = await self.score_pairs(pair_request, request.state, started)
        started = time.perf_counter()
        answer = route.api.build_response(body, pair_request, scores, context)
        response = Response(
            answer.model_dump_json(exclude_none=True),
            media_type="application/json",
            headers=truncation_header(scores.query_truncated),
        )
        self.metrics.stage_duration.observe(time.perf_counter() - started, tags={"stage": "response"})
        return response

    async def Rerank(
        self, request: tei_pb2.RerankRequest, grpc_context: RayServegRPCContext
    ) -> tei_pb2.RerankResponse:
        """TEI's gRPC `Rerank`: the `/rerank` path, answered as TEI's RerankResponse."""

        async def answer(state: CallState) -> tei_pb2.RerankResponse:
            started = time.perf_counter()
            tei_grpc.check_message_bytes(request.ByteSize(), self.settings)
            call = tei_grpc.from_request(request, ApiContext(self.settings, self.model_names, state.request_id))
            return await self.answer_grpc(call, state, grpc_context, started)

        return await self.grpc_calls.run("Rerank", grpc_context, grpc_request_id(), answer, tei_pb2.RerankResponse)

    async def RerankStream(
        self, requests: AsyncIterator[tei_pb2.RerankStreamRequest], grpc_context: RayServegRPCContext
    ) -> tei_pb2.RerankResponse:
        """TEI's gRPC `RerankStream`: one (query, text) per message, scored together once the stream ends."""

        async def answer(state: CallState) -> tei_pb2.RerankResponse:
            started = time.perf_counter()
            messages = await tei_grpc.read_stream(requests, self.settings)
            call = tei_grpc.from_stream(messages, ApiContext(self.settings, self.model_names, state.request_id))
            return await self.answer_grpc(call, state, grpc_context, started)

        return await self.grpc_calls.run(
            "RerankStream", grpc_context, grpc_request_id(), answer, tei_pb2.RerankResponse
        )

    async def answer_grpc(
        self, call: tei_grpc.GrpcRerank, state: CallState, grpc_context: RayServegRPCContext, started: float
    ) -> tei_pb2.RerankResponse:
        scores = await self.score_pairs(call.pairs, state, started)
        response_started = time.perf_counter()
        answer = tei_grpc.build_response(call, scores, total_time_ns=int((response_started - started) * 1e9))
        if scores.query_truncated:
            add_trailing_metadata(grpc_context, [(k.lower(), v) for k, v in truncation_header(True).items()])
        self.metrics.stage_duration.observe(time.perf_counter() - response_started, tags={"stage": "response"})
        return answer

    async def ready(self) -> JSONResponse:
        try:
            await self.pipeline.ensure_ready()
        except NotReadyError:
            return JSONResponse(
                {"status": "not_ready", "reason": self.pipeline.not_ready_reason},
                status_code=503,
                headers={"Retry-After": "5"},
            )
        return JSONResponse({"status": "ready"})

    async def info(self) -> dict:
        """This service's description, and TEI's /info fields beside it (for `tei-client`)."""
        tokenizer_info, scorers = await self.pipeline.describe()
        head = scorers[0] if scorers else {}
        s = self.settings
        tei = tei_info(s, tokenizer_info, head, await running_replicas(), ingress_limits(), __version__)
        return {
            **tei.model_dump(),
            "model_id": s.model,
            "revision": s.revision,
            "aliases": sorted(self.model_names),
            "num_labels": head.get("num_labels"),
            "score": head.get("score"),
            "max_length": tokenizer_info["max_length"],
            "long_passage_mode": s.long_passage_mode,
            "max_chunks_per_doc": s.max_chunks_per_doc,
            "limits": {
                "max_documents": s.max_documents,
                "max_document_chars": s.max_document_chars,
                "max_query_chars": s.max_query_chars,
                "max_body_bytes": s.max_body_bytes,
                "request_deadline_s": s.request_deadline_s,
            },
            "scorers": scorers,
            "tokenizer": tokenizer_info,
            "version": __version__,
        }

    async def weaviate_meta(self) -> weaviate.WeaviateMeta:
        tokenizer_info, scorers = await self.pipeline.describe()
        head = scorers[0] if scorers else {}
        return weaviate.WeaviateMeta(
            model={
                "model_id": self.settings.model,
                "revision": self.settings.revision,
                "model_sha": tokenizer_info.get("model_sha"),
                "id2label": tokenizer_info.get("id2label"),
                "max_length": tokenizer_info["max_length"],
                "score": head.get("score"),
                "version": __version__,
            }
        )


def ingress_limits() -> dict[str, int]:
    """This deployment's max_ongoing_requests and max_queued_requests, as Serve runs it."""
    config = serve.get_replica_context()._deployment_config
    return {"max_ongoing_requests": config.max_ongoing_requests, "max_queued_requests": config.max_queued_requests}


def grpc_request_id() -> str:
    """The id Serve's gRPC proxy gave this call (the client's `request_id` metadata, or a new one).

    The proxy sends it back in the trailing metadata and Serve puts it on its own log lines; Serve
    has no public getter for it outside HTTP.
    """
    return serve.context._get_serve_request_context().request_id


async def current_ingress() -> Ingress:
    """The Ingress instance of this replica (FastAPI dependency).

    Async, so FastAPI resolves it on the event loop: a plain function would cost a thread-pool hop
    per request (about 5% of the ingress's CPU under load when it was changed, commit 4c1c948).
    """
    return serve.get_replica_context().servable_object


def rerank_endpoint(route: Route):
    """A FastAPI endpoint for one route of the table, typed with its family's request model."""
    body_model = route.api.request_model

    async def endpoint(request: Request, body: body_model, ingress: Ingress = Depends(current_ingress)):  # type: ignore[valid-type]
        return await ingress.rerank(request, route, body)

    endpoint.__name__ = "rerank_" + route.path.strip("/").replace("/", "_")
    return endpoint


def build_routes(app: FastAPI) -> FastAPI:
    """Attaches the route table's rerank routes and the operational routes."""
    for route in RERANK_ROUTES:
        error_model = ERROR_MODELS[route.api.error_family]
        app.add_api_route(
            route.path,
            rerank_endpoint(route),
            methods=["POST"],
            response_model=route.api.response_model,
            responses={code: {"model": error_model} for code in ERROR_STATUSES},
            summary=route.api.summary,
        )

    @app.get("/health", summary="Liveness: the ingress is serving")
    async def health():
        return {"status": "ok"}

    @app.get(
        "/ready",
        responses={503: {"model": NotReadyBody}},
        summary="Readiness: 200 once a canary pair has been scored end to end",
    )
    async def ready(ingress: Ingress = Depends(current_ingress)):
        return await ingress.ready()

    @app.get("/info", summary="Model, score definition, limits, and each scorer's device and dtype")
    async def info(ingress: Ingress = Depends(current_ingress)):
        return await ingress.info()

    @app.get(
        weaviate.READY_PATH,
        status_code=204,
        response_class=Response,
        responses={503: {"model": NotReadyBody}},
        summary="Weaviate's readiness probe: 204 once a canary pair has been scored",
    )
    async def weaviate_ready(ingress: Ingress = Depends(current_ingress)):
        answer = await ingress.ready()
        return answer if answer.status_code != 200 else Response(status_code=204)

    @app.get(weaviate.LIVE_PATH, status_code=204, response_class=Response, summary="Weaviate's liveness probe")
    async def weaviate_live():
        return Response(status_code=204)

    @app.get(weaviate.META_PATH, response_model=weaviate.WeaviateMeta, summary="The model, for Weaviate's /v1/meta")
    async def weaviate_meta(ingress: Ingress = Depends(current_ingress)):
        return await ingress.weaviate_meta()

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics of every replica on this node")
    async def metrics():
        text = await asyncio.to_thread(node_metrics_text)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def ingress_deployment(settings: RerankerSettings) -> Deployment:
    """The Ingress deployment with its FastAPI app, built for these settings (never at import)."""

    def build_app() -> FastAPI:
        # Serve calls this in each replica. An app built by the application builder instead, and
        # pickled to the replicas, loses the identity of FastAPI's `_Unset` sentinel: its OpenAPI
        # document then shows `"example": {}` on every request body.
        return build_routes(create_app(settings))

    return serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)(
        serve.ingress(build_app)(Ingress)
    )
