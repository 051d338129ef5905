"""The proxy middlewares (tier 1): a request the proxy never answered (its ingress replica lost) gets
503; while the proxy's readiness probe fails, responses close their keep-alive connections (checked
on uvicorn, the server Serve's proxy runs)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from ports import free_port
from reranker.proxy import LOST_MESSAGE, ReadinessCloseMiddleware, ReplicaLossMiddleware, proxy_middlewares


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
    assert all(type(m) is Middleware for m in middlewares)
    # Serve wraps in list order (the last outermost): the readiness one sees the loss one's 503 too.
    assert [m.cls for m in middlewares] == [ReplicaLossMiddleware, ReadinessCloseMiddleware]


class DrainableProxy:
    """What Serve's proxy answers: `/-/healthz` 200, or 503 "This node is being drained." while
    draining; any other path 200, with the client address it came from."""

    def __init__(self):
        self.draining = False

    async def __call__(self, scope, receive, send):
        if scope["path"] == "/-/healthz":
            if self.draining:
                await JSONResponse("This node is being drained.", status_code=503)(scope, receive, send)
            else:
                await JSONResponse("success")(scope, receive, send)
            return
        await JSONResponse({"client_port": scope["client"][1]})(scope, receive, send)


def test_unready_proxy_closes_every_connection_until_ready_again():
    proxy = DrainableProxy()
    client = TestClient(ReadinessCloseMiddleware(proxy))
    assert "connection" not in client.post("/rerank", json={}).headers
    proxy.draining = True
    assert "connection" not in client.post("/rerank", json={}).headers  # no probe has seen it yet
    probe = client.get("/-/healthz")
    assert probe.status_code == 503 and probe.headers["connection"] == "close"
    for path in ("/rerank", "/v1/rerank", "/metrics"):
        assert client.post(path, json={}).headers["connection"] == "close"
    proxy.draining = False
    assert "connection" not in client.get("/-/healthz").headers
    assert "connection" not in client.post("/rerank", json={}).headers


def test_other_paths_do_not_change_readiness():
    """Only the proxy's own health route counts: a 404 or 503 elsewhere (an app's error, a client
    asking for a health path under another prefix) leaves the proxy ready."""

    async def app(scope, receive, send):
        await JSONResponse({}, status_code=503 if scope["path"] == "/rerank" else 404)(scope, receive, send)

    client = TestClient(ReadinessCloseMiddleware(app))
    for path in ("/rerank", "/x/-/healthz", "/-/healthz/x"):
        client.get(path)
    assert "connection" not in client.get("/rerank").headers


def test_keep_alive_client_moves_off_a_draining_proxy_on_uvicorn():
    """On uvicorn (what Serve's proxy runs, with its defaults) the header really closes the
    connection: a pooled client keeps one connection while the proxy is ready and opens a new one
    for every request while it is not."""
    proxy = DrainableProxy()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(ReadinessCloseMiddleware(proxy), host="127.0.0.1", port=port,
                                           lifespan="off", access_log=False, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            ready = [client.post("/rerank").json()["client_port"] for _ in range(3)]
            assert len(set(ready)) == 1
            proxy.draining = True
            assert client.get("/-/healthz").status_code == 503
            draining = [client.post("/rerank").json()["client_port"] for _ in range(3)]
            assert len(set(draining)) == 3 and not set(draining) & set(ready)
            proxy.draining = False
            assert client.get("/-/healthz").status_code == 200
            again = [client.post("/rerank").json()["client_port"] for _ in range(3)]
            assert len(set(again)) == 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)
