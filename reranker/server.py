"""The FastAPI application factory: middleware (request context, API keys, body limit, metrics,
access log, unexpected errors) and the exception handlers that give every error one JSON body.

Routes are attached by the ingress deployment (deployments/ingress.py) from the route table.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from reranker import __version__
from reranker.api import BODY_UNION_TAGS, KNOWN_PATHS, PUBLIC_PATHS, error_family
from reranker.errors import (
    HTTP_ERRORS,
    INTERNAL_ERROR_MESSAGE,
    PayloadTooLargeError,
    RerankerError,
    UnauthenticatedError,
    ValidationError,
    error_body,
    error_headers,
)
from reranker.metrics import HttpMetrics
from reranker.settings import RerankerSettings, load_api_keys

logger = logging.getLogger("ray.serve")

# nginx's code for a request whose client went away before the answer: not a server error.
CLIENT_CLOSED_REQUEST = 499


def local_path(scope) -> str:
    """The request path below the application's route prefix."""
    path, prefix = scope.get("path", ""), scope.get("root_path", "")
    return path[len(prefix):] or "/" if prefix and path.startswith(prefix) else path


def presented_key(authorization: str) -> bytes:
    """The key in an Authorization header: `Bearer <key>`, or the bare key (LlamaIndex's TEI clients send that)."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip().encode("utf-8")
    return authorization.strip().encode("utf-8")


def check_api_key(authorization: str, keys: list[bytes]) -> None:
    """Raises UnauthenticatedError unless the Authorization header (`Bearer <key>` or `<key>`) names one of `keys`.

    Every key is compared, always, in constant time, so timing does not reveal which one nearly matched.
    """
    presented = presented_key(authorization)
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    if not matched:
        raise UnauthenticatedError("Missing or invalid API key: send 'Authorization: Bearer <key>'.")


def error_response(exc: RerankerError, path: str) -> JSONResponse:
    return JSONResponse(error_body(exc, error_family(path)), status_code=exc.status_code, headers=error_headers(exc))


def reason_for_status(code: int) -> str:
    return {400: "empty", 401: "unauthenticated", 413: "too_large", 422: "validation", 429: "overloaded",
            499: "client_closed", 503: "not_ready", 504: "deadline"}.get(code, "validation" if 400 <= code < 500 else "internal")


def record_request(
    metrics: HttpMetrics, method: Optional[str], route: str, request_id: str, code: int, elapsed: float, state: dict
) -> None:
    """One finished request (HTTP, or gRPC with its HTTP-equivalent code): metrics and one JSON access-log line."""
    metrics.requests.inc(tags={"route": route, "status_code": str(code)})
    metrics.request_duration.observe(elapsed, tags={"route": route})
    if code >= 400:
        metrics.failures.inc(tags={"reason": state.get("failure_reason") or reason_for_status(code)})
    logger.info(
        json.dumps(
            {
                "event": "access",
                "request_id": request_id,
                "method": method,
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


class RequestContextMiddleware:
    """Per request: id, API key, body-size limit, in-flight gauge, metrics, one JSON access-log line,
    and the generic 500 for an unexpected error (details only in the log, with the request id)."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Built inside the replica (Starlette builds middleware on first use), where the
        # application's environment is set and metric objects may exist.
        self.api_keys = [key.encode("utf-8") for key in load_api_keys()]
        self.metrics = HttpMetrics()
        self.in_flight = 0

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
        route = path if path in KNOWN_PATHS else "other"
        status = {"code": 500, "started": False}
        limit = self.max_body_bytes
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status.update(code=message["status"], started=True)
            await send(message)

        received = {"bytes": 0}

        async def receive_wrapper():
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > limit:
                    raise PayloadTooLargeError(f"Request body exceeds max_body_bytes ({limit} bytes).")
            return message

        async def answer(error: RerankerError):
            state["failure_reason"] = error.reason
            await error_response(error, path)(scope, receive, send_wrapper)

        try:
            rejection = self.reject_before_body(path, headers, limit)
            if rejection is not None:
                await answer(rejection)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except PayloadTooLargeError as exc:
            await answer(exc)
        except (asyncio.CancelledError, ClientDisconnect):
            # The client went away (Serve cancels the request): not a server error.
            if not status["started"]:
                status["code"] = CLIENT_CLOSED_REQUEST
            raise
        except Exception:
            logger.exception("Unhandled error in request %s", request_id)
            if not status["started"]:
                await answer(RerankerError(INTERNAL_ERROR_MESSAGE))
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)
            self.record(scope, route, request_id, status["code"], time.perf_counter() - started, state)

    def record(self, scope, route: str, request_id: str, code: int, elapsed: float, state: dict) -> None:
        record_request(self.metrics, scope.get("method"), route, request_id, code, elapsed, state)

    def reject_before_body(self, path: str, headers: dict, limit: int) -> Optional[RerankerError]:
        """API key and declared body size, checked before the body is read or validated."""
        if self.api_keys and path not in PUBLIC_PATHS:
            try:
                check_api_key(headers.get("authorization", ""), self.api_keys)
            except UnauthenticatedError as exc:
                return exc
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return PayloadTooLargeError(f"Request body exceeds max_body_bytes ({limit} bytes).")
        return None


async def reranker_error(request: Request, exc: RerankerError) -> JSONResponse:
    request.state.failure_reason = exc.reason
    return error_response(exc, local_path(request.scope))


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors()[:5]:
        # ("body", <union tag>, field, ...) on a route that takes several bodies: the tag is no field.
        parts = [p for p in err.get("loc", ()) if p != "body"]
        if parts and parts[0] in BODY_UNION_TAGS:
            parts = parts[1:]
        location = ".".join(str(p) for p in parts) or "body"
        problems.append(f"{location}: {err.get('msg', 'invalid')}")
    return await reranker_error(request, ValidationError("Invalid request: " + "; ".join(problems)))


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI turns any error raised while reading the body into 400 "error parsing the body": the
    # body-size limit (raised by the middleware's receive) keeps its 413; bodies json.loads cannot
    # read (invalid UTF-8, nesting past the recursion limit) fail like invalid JSON, with 422.
    if isinstance(exc.__cause__, RerankerError):
        return await reranker_error(request, exc.__cause__)
    if exc.status_code == 400:
        return await reranker_error(request, ValidationError("Invalid request: the body is not valid UTF-8 JSON."))
    error = HTTP_ERRORS.get(exc.status_code, RerankerError)(
        f"{request.method} {local_path(request.scope)}: {exc.detail}", headers=exc.headers
    )
    return await reranker_error(request, error)


def create_app(settings: RerankerSettings) -> FastAPI:
    """A FastAPI app with the service's middleware and error handlers, and no routes yet."""
    app = FastAPI(
        title="Multilingual reranker",
        version=__version__,
        description="Cross-encoder reranking with TEI, Cohere (v1, v2) and Jina compatible routes.",
    )
    app.add_exception_handler(RerankerError, reranker_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
