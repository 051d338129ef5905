"""Serve's HTTP proxy middlewares: a lost ingress replica answers 503, an unready proxy closes connections.

The proxy loads both when RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH is
`reranker.proxy:proxy_middlewares` (the image and scripts/serve.py set it).

ReplicaLossMiddleware. When the ingress replica holding a request dies (its node or pod lost, an
OOM kill), Serve's proxy gets a RayActorError, sends nothing, and uvicorn fills in a bare 500. For
the client that request met a replica that was going away, which is what 503 with Retry-After says:
another replica serves the retry. It only ever answers a request that got no response at all, in
the route family's error body.

ReadinessCloseMiddleware. When a worker pod's proxy has no replica left on its node, Serve drains it:
`/-/healthz` answers 503, KubeRay's readiness probe (every 5 s, one failure) takes the pod out of
the serve Service, and after at least 30 s without requests in flight Serve stops the proxy and the
autoscaler may remove the pod. New connections then go elsewhere, but a client that keeps its
connection alive (as search clients' pools do) goes on sending to the draining proxy until it is
stopped, and a request sent at that moment is lost with its connection. So while this proxy's last
`/-/healthz` answer was not 200, every response also says `Connection: close`; the client's next
request opens a new connection, which the Service gives to a ready pod. The middleware only
watches the answers to the probes that already come; it sends none itself.
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


HEALTH_PATH = "/-/healthz"


class ReadinessCloseMiddleware:
    """Pure ASGI middleware around the proxy: while its last `/-/healthz` answer was not 200 (the
    readiness probe failing), every response carries `Connection: close`."""

    def __init__(self, app):
        self.app = app
        self.ready = True

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The path Serve's proxy answers itself (its route path: the path under the root path).
        is_probe = scope.get("path", "") == scope.get("root_path", "") + HEALTH_PATH

        async def closing_send(message) -> None:
            if message["type"] == "http.response.start":
                if is_probe:
                    self.ready = message["status"] == 200
                if not self.ready:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": headers + [(b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing_send)


def proxy_middlewares() -> list[Middleware]:
    """What RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH calls in every proxy at start-up. Serve wraps
    the proxy in them in this order, so the last is outermost: the readiness one also closes the
    connection of a 503 the replica-loss one answers."""
    return [Middleware(ReplicaLossMiddleware), Middleware(ReadinessCloseMiddleware)]
