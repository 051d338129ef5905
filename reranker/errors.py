"""One exception hierarchy and one status table for every route.

TEI-style routes (`/rerank`, `/score`, `/weaviate/rerank`) answer `{"error", "error_type"}`;
Cohere/Jina routes (`/v1/rerank`, `/v2/rerank`) answer `{"message", "detail"}` with the same text in
both: Cohere's SDK reads `message`, Jina's clients (Haystack, LangChain, LlamaIndex) read `detail`.
Both bodies come from `error_body`, so there is one error path.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import BaseModel


class RerankerError(Exception):
    """Base class: a message that is safe to show to the client, plus its HTTP mapping."""

    status_code = 500
    error_type = "internal"
    # Closed set of reasons for the failures metric.
    reason = "internal"
    # Headers every response of this error carries.
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str, *, retry_after_s: Optional[float] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.headers = {**type(self).headers, **(headers or {})}


class EmptyInputError(RerankerError):
    status_code = 400
    error_type = "empty"
    reason = "empty"


class UnauthenticatedError(RerankerError):
    status_code = 401
    error_type = "unauthenticated"
    reason = "unauthenticated"
    # RFC 6750: a 401 names the scheme the client should use.
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class RouteNotFoundError(RerankerError):
    status_code = 404
    error_type = "not_found"
    reason = "validation"


class MethodNotAllowedError(RerankerError):
    status_code = 405
    error_type = "method_not_allowed"
    reason = "validation"


class PayloadTooLargeError(RerankerError):
    status_code = 413
    error_type = "payload_too_large"
    reason = "too_large"


class ValidationError(RerankerError):
    status_code = 422
    error_type = "validation"
    reason = "validation"


class OverloadedError(RerankerError):
    status_code = 429
    error_type = "overloaded"
    reason = "overloaded"


class NotReadyError(RerankerError):
    status_code = 503
    error_type = "unhealthy"
    reason = "not_ready"


class ScorerUnavailableError(RerankerError):
    status_code = 503
    error_type = "unhealthy"
    reason = "scorer_unavailable"


class DeadlineExceededError(RerankerError):
    status_code = 504
    error_type = "deadline"
    reason = "deadline"


class ModelLoadError(RerankerError):
    """The model or tokenizer cannot be loaded; raised at start-up, never per request."""

    status_code = 503
    error_type = "unhealthy"
    reason = "not_ready"


class SettingsError(ValueError):
    """A setting has an invalid value; raised at start-up with the setting's name."""


# Framework-level HTTP errors (unknown route, wrong method) in the same bodies.
HTTP_ERRORS = {404: RouteNotFoundError, 405: MethodNotAllowedError}

# The same table for gRPC (TEI's `Rerank` RPC): each HTTP status above maps to the gRPC status
# code TEI's own gRPC server gives that error type (router/src/grpc/server.rs): validation and
# empty input are INVALID_ARGUMENT, and so is a request over a limit (TEI: batch size and input
# length are validation errors); overloaded is RESOURCE_EXHAUSTED, unhealthy UNAVAILABLE, a missing
# or wrong key UNAUTHENTICATED. Names of `grpc.StatusCode` members, so this module needs no grpc.
GRPC_STATUS_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

FAILURE_REASONS = (
    "empty",
    "unauthenticated",
    "too_large",
    "validation",
    "overloaded",
    "not_ready",
    "deadline",
    "scorer_unavailable",
    "client_closed",
    "internal",
)

INTERNAL_ERROR_MESSAGE = "Internal server error. The request id identifies it in the server logs."


def error_body(exc: RerankerError, family: str) -> dict:
    """The JSON body for an error on a route family: 'tei' or 'cohere'."""
    if family == "cohere":
        return {"message": exc.message, "detail": exc.message}
    return {"error": exc.message, "error_type": exc.error_type}


def grpc_status(exc: RerankerError) -> tuple[str, str]:
    """The gRPC status code name and details for an error; an internal error's details are generic."""
    code = GRPC_STATUS_CODES.get(exc.status_code, "INTERNAL")
    return code, (INTERNAL_ERROR_MESSAGE if code == "INTERNAL" else exc.message)


def error_headers(exc: RerankerError) -> dict:
    headers = dict(exc.headers)
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, int(round(exc.retry_after_s))))
    return headers


class ErrorBody(BaseModel):
    """TEI routes' error body."""

    error: str
    error_type: str


class CohereErrorBody(BaseModel):
    """Cohere and Jina routes' error body: Cohere's SDK reads `message`, Jina's clients `detail` (the same text)."""

    message: str
    detail: str


class NotReadyBody(BaseModel):
    """/ready's 503 body: why the model cannot score yet."""

    status: Literal["not_ready"]
    reason: str


ERROR_MODELS = {"tei": ErrorBody, "cohere": CohereErrorBody}
