"""gRPC calls that Serve's gRPC proxy hands to the ingress: what server.py's RequestContextMiddleware
does for HTTP, per call: API key (metadata `authorization`), metrics, one access-log line, and every
error as a gRPC status code from the one table in reranker/errors.py (a generic message for a 500).

Serve delivers the call to a deployment method with a `grpc_context` (RayServegRPCContext); an error
is answered by setting its code and details and returning an empty message, which the proxy sends
as the call's status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Optional, TypeVar

import grpc

from reranker.errors import INTERNAL_ERROR_MESSAGE, RerankerError, error_headers, grpc_status
from reranker.metrics import HttpMetrics
from reranker.server import CLIENT_CLOSED_REQUEST, check_api_key, record_request
from reranker.settings import load_api_keys

logger = logging.getLogger("ray.serve")

Message = TypeVar("Message")


@dataclass
class CallState:
    """What a call learns on its way, for the access log and metrics (HTTP keeps the same in request.state)."""

    request_id: str
    passages: int = 0
    tokens: int = 0
    text: Optional[dict] = None
    failure_reason: Optional[str] = None


def metadata_value(grpc_context, key: str) -> str:
    """The last value of one invocation-metadata key ('' when absent); gRPC keys are lower case."""
    value = ""
    for name, item in grpc_context.invocation_metadata():
        if name == key:
            value = item
    return value


def add_trailing_metadata(grpc_context, pairs: list[tuple[str, str]]) -> None:
    """Adds to the trailing metadata. RayServegRPCContext.set_trailing_metadata replaces everything
    but the proxy's `request_id`, which it keeps by itself, so the other entries are passed again."""
    kept = [(key, value) for key, value in grpc_context.trailing_metadata() if key != "request_id"]
    grpc_context.set_trailing_metadata([*kept, *pairs])


def set_error_status(grpc_context, error: RerankerError) -> None:
    """The error's gRPC code and details, and its HTTP headers (Retry-After, ...) as trailing metadata."""
    code, details = grpc_status(error)
    grpc_context.set_code(grpc.StatusCode[code])
    grpc_context.set_details(details)
    headers = error_headers(error)
    if headers:
        add_trailing_metadata(grpc_context, [(name.lower(), value) for name, value in headers.items()])


class GrpcCalls:
    """Runs each gRPC call of one ingress replica: key check, error mapping, metrics and access log."""

    def __init__(self):
        # Built in the replica's constructor, where the application's environment is set.
        self.api_keys = [key.encode("utf-8") for key in load_api_keys()]
        self.metrics = HttpMetrics()

    async def run(
        self,
        method: str,
        grpc_context,
        request_id: str,
        answer: Callable[[CallState], Awaitable[Message]],
        empty: Callable[[], Message],
    ) -> Message:
        """Calls `answer` once the key is checked; any error becomes the call's status with an empty message."""
        started = time.perf_counter()
        state = CallState(request_id=request_id)
        code = 500
        try:
            if self.api_keys:
                check_api_key(metadata_value(grpc_context, "authorization"), self.api_keys)
            response = await answer(state)
            code = 200
            return response
        except RerankerError as error:
            code = error.status_code
            state.failure_reason = error.reason
            set_error_status(grpc_context, error)
            return empty()
        except asyncio.CancelledError:
            # The client went away (Serve cancels the call): not a server error.
            code = CLIENT_CLOSED_REQUEST
            raise
        except Exception:
            logger.exception("Unhandled error in gRPC call %s", request_id)
            set_error_status(grpc_context, RerankerError(INTERNAL_ERROR_MESSAGE))
            return empty()
        finally:
            record_request(
                self.metrics, "grpc", f"grpc:{method}", request_id, code, time.perf_counter() - started, asdict(state)
            )
