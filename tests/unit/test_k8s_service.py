"""The rehearsal's serve Service (tests/k8s_service.py) routes as KubeRay's does (tier 1): only to pods
whose proxy passes the readiness probe, one pod per connection, and never to a pod whose proxy is
gone."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from k8s_service import ServeService
from ports import free_port


class Pod:
    """A worker pod's proxy: `/-/healthz` 200 or 503 (draining), any other path its own name."""

    def __init__(self, name: str, healthy: bool = True):
        self.name, self.healthy = name, healthy
        pod = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status, body = (200, pod.name)
                if self.path == "/-/healthz":
                    status, body = (200, "success") if pod.healthy else (503, "This node is being drained.")
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def wait_until(predicate, timeout_s: float = 30.0):
    # A bound for a stalled run, not a timing claim: this tier runs at nice 19 beside the Ray tiers.
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def answers(url: str, count: int) -> list[str]:
    # A new connection per request, as the rehearsal's default clients make them.
    with httpx.Client(headers={"connection": "close"}) as client:
        return [client.get(url).text for _ in range(count)]


def test_service_routes_to_ready_pods_only_and_drops_a_gone_one():
    a, b = Pod("a"), Pod("b", healthy=False)
    service = ServeService(free_port(), lambda: [a.port, b.port, free_port()], period_s=0.05).start()
    url = f"http://127.0.0.1:{service.port}/rerank"
    try:
        wait_until(lambda: service.ready == {a.port})
        assert set(answers(url, 20)) == {"a"}  # b drains: out of the Service
        b.healthy = True
        wait_until(lambda: service.ready == {a.port, b.port})
        assert set(answers(url, 40)) == {"a", "b"}  # a random ready pod per connection
        # A pod gone (its node killed): the connection that finds it refusing goes to another pod,
        # and the pod leaves the Service without waiting for a probe (the next is an hour away).
        service.period_s = 3600
        time.sleep(0.3)
        assert service.ready == {a.port, b.port}
        a.stop()
        assert set(answers(url, 20)) == {"b"}
        assert service.ready == {b.port}
    finally:
        service.stop()
        b.stop()


def test_service_without_a_ready_pod_closes_the_connection():
    pod = Pod("a", healthy=False)
    service = ServeService(free_port(), lambda: [pod.port], period_s=0.05).start()
    try:
        time.sleep(0.2)  # a few probes
        assert service.ready == set()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{service.port}/rerank")
        assert service.refused == 1
    finally:
        service.stop()
        pod.stop()
