"""A Kubernetes Service in front of the rehearsal's fake pods, as KubeRay's serve Service behaves.

Endpoints: a worker pod is in the Service while its readiness probe passes. KubeRay injects the
probe into RayService worker pods: every 5 s, the pod's Serve proxy at `/-/healthz` (wget with a
2 s timeout), one failure enough to take the pod out, one success to bring it back; a pod starts
out of the Service. A draining proxy (no replica left on its node) answers 503 there, so its pod
leaves the Service within one period, long before Serve stops the proxy (at least 30 s later) and
the autoscaler removes the pod.

A pod whose proxy refuses connections has exited (its node was killed): the kubelet sees the container
gone and takes the pod out without waiting for a probe, so here the Service drops that port at once
and tries another ready one for the same connection. Kubernetes takes a second or two to spread
that change, during which new connections to the dead pod fail; that window is not modelled.

Connections: kube-proxy picks one ready endpoint at random for each new TCP connection and the
connection stays with that pod (here: bytes copied both ways until either side closes; a pod that
dies resets its connections, which the client sees as a lost connection, as behind a real Service).
A connection that arrives while no endpoint is ready is closed at once (Kubernetes rejects it).

Runs its own event loop in a thread; `ports()` says which ports to probe (the fake pods' proxies).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Callable, Optional

PROBE_PATH = "/-/healthz"
PROBE_PERIOD_S = 5.0  # KubeRay DefaultReadinessProbePeriodSeconds
PROBE_TIMEOUT_S = 2.0  # the wget -T 2 of KubeRay's serve health command
COPY_CHUNK_BYTES = 65536


class ServeService:
    def __init__(self, port: int, ports: Callable[[], list[int]], *, period_s: float = PROBE_PERIOD_S,
                 timeout_s: float = PROBE_TIMEOUT_S, seed: int = 0):
        self.port, self._ports, self.period_s, self.timeout_s = port, ports, period_s, timeout_s
        self.ready: set[int] = set()
        self.history: list[tuple[float, tuple[int, ...]]] = []  # (time.monotonic(), ready ports) at each change
        self.refused = 0  # connections closed for want of a ready pod
        self.probes: dict[str, int] = {}  # outcome ("ready", "unready", "timeout") -> probes
        self.slowest_answer_s = 0.0  # the slowest probe a proxy answered
        self.max_loop_lag_s = 0.0
        self._rng = random.Random(seed)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._started = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    # ----- lifecycle

    def start(self) -> "ServeService":
        self._thread = threading.Thread(target=self._run, name="k8s-service", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)
        prober = asyncio.create_task(self._probe_forever())
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            prober.cancel()
            server.close()
            await server.wait_closed()

    # ----- endpoints

    async def _probe(self, port: int) -> bool:
        """One probe of one port, within timeout_s; counted in `probes` by outcome (a port nobody
        listens on is not counted: most of the ports probed are for pods not started)."""
        started = time.monotonic()
        try:
            outcome = await asyncio.wait_for(self._ask(port), self.timeout_s)
        except asyncio.TimeoutError:
            outcome = "timeout"
        if outcome in ("ready", "unready"):
            self.slowest_answer_s = max(self.slowest_answer_s, time.monotonic() - started)
        if outcome != "refused":
            self.probes[outcome] = self.probes.get(outcome, 0) + 1
        return outcome == "ready"

    @staticmethod
    async def _ask(port: int) -> str:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return "refused"
        try:
            writer.write(f"GET {PROBE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            status_line = await reader.readline()
            return "ready" if status_line.split()[1:2] == [b"200"] else "unready"
        except OSError:
            return "unready"
        finally:
            writer.close()

    async def _probe_forever(self) -> None:
        while True:
            ports = list(self._ports())
            results = await asyncio.gather(*(self._probe(p) for p in ports))
            self._set_ready({p for p, ok in zip(ports, results) if ok})
            slept = time.monotonic()
            await asyncio.sleep(self.period_s)
            # How late this loop wakes up: time its own thread lost (the GIL, the machine's load).
            self.max_loop_lag_s = max(self.max_loop_lag_s, time.monotonic() - slept - self.period_s)

    def _set_ready(self, ready: set[int]) -> None:
        if ready != self.ready:
            self.history.append((time.monotonic(), tuple(sorted(ready))))
        self.ready = ready

    # ----- connections

    async def _connect(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        while True:
            ready = sorted(self.ready)
            if not ready:
                self.refused += 1
                client_writer.close()
                return
            port = self._rng.choice(ready)
            try:
                pod_reader, pod_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                self._set_ready(self.ready - {port})  # its container is gone
        upstream = asyncio.create_task(self._copy(client_reader, pod_writer))
        downstream = asyncio.create_task(self._copy(pod_reader, client_writer))
        # Either side closing (or resetting) ends the connection on both.
        await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        for writer in (pod_writer, client_writer):
            writer.close()

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(COPY_CHUNK_BYTES):
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
