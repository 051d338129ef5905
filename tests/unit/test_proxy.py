"""The proxy middleware: a request the proxy never answered (its ingress replica lost) gets 503 (tier 1)."""

from __future__ import annotations

import pytest
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from reranker.proxy import LOST_MESSAGE, ReplicaLossMiddleware, proxy_middlewares


async def replica_lost(scope, receive, send):
    """What Serve's proxy does on a RayActorError: tags the request id, then sends nothing."""
    scope["headers"].append((b"x-request-id", b"req-1"))


async def proxy_raises(scope, receive, send):
    raise RuntimeError("controller unreachable")


async def answers(scope, receive, send):
    await JSONResponse({"ok": True}, status_code=200)(scope, receive, send)


@pytest.mark.parametrize("app", [replica_lost, proxy_raises])
@pytest.mark.parametrize(("path", "body"), [
    ("/rerank", {"error": LOST_MESSAGE, "error_type": "unhealthy"}),
    ("/v2/rerank", {"message": LOST_MESSAGE, "detail": LOST_MESSAGE}),
])
def test_unanswered_request_gets_503_with_retry_after(app, path, body):
    response = TestClient(ReplicaLossMiddleware(app)).post(path, json={})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == body
    if app is replica_lost:
        assert response.headers["x-request-id"] == "req-1"


def test_answered_request_passes_through():
    response = TestClient(ReplicaLossMiddleware(answers)).get("/rerank")
    assert (response.status_code, response.json()) == (200, {"ok": True})


def test_callback_returns_starlette_middlewares():
    middlewares = proxy_middlewares()
    assert [type(m) for m in middlewares] == [Middleware]
    assert middlewares[0].cls is ReplicaLossMiddleware
