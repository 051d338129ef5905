"""Serve's HTTP proxy: a request whose ingress replica is lost mid-flight answers 503 with Retry-After.

When the ingress replica holding a request dies (its node or pod lost, an OOM kill), Serve's proxy
gets a RayActorError, sends nothing, and uvicorn fills in a bare 500. For the client that request
met a replica that was going away, which is what 503 with Retry-After says: another replica serves
the retry. The proxy loads this middleware when RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH is
`reranker.proxy.proxy_middlewares` (the image sets it); it only ever answers a request that got no
response at all, in the route family's error body.
"""

from __future__ import annotations

import logging

from starlette.middleware import Middleware

from reranker.errors import NotReadyError
from reranker.server import error_response

logger = logging.getLogger("ray.serve")

RETRY_AFTER_S = 1
LOST_MESSAGE = "The replica serving this request was lost; retry it."


class ReplicaLossMiddleware:
    """Pure ASGI middleware around the proxy: a response the proxy never started becomes a 503."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            logger.warning("Proxy failed before answering %s; answering 503.", scope.get("path"), exc_info=True)
        if not started:
            await send_unavailable(scope, receive, send)


async def send_unavailable(scope, receive, send) -> None:
    """503, Retry-After and the family's error body (the service's one error path); the request id
    if Serve gave the request one."""
    response = error_response(NotReadyError(LOST_MESSAGE, retry_after_s=RETRY_AFTER_S), scope.get("path", ""))
    request_id = dict(scope.get("headers") or []).get(b"x-request-id")
    if request_id:
        response.headers["x-request-id"] = request_id.decode("latin-1")
    await response(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    """What RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH calls in every proxy at start-up."""
    return [Middleware(ReplicaLossMiddleware)]
