"""Run a real, throwaway Prometheus server for tests.

    with PrometheusServer(target="127.0.0.1:8000", binary=require_tool("prometheus")) as prom:
        prom.wait_for("ray_reranker_requests_total")
        results = prom.query("sum(ray_reranker_requests_total)")

The server listens on 127.0.0.1 on a free port, scrapes ``http://<target><metrics_path>``
every second, keeps its TSDB in a temporary directory and is stopped by its own PID
(terminate, wait, kill). No pytest in here: the caller finds the binary
(``external_tools.require_tool("prometheus")``) and passes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

from ports import free_port


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    def __init__(
        self,
        target: str,
        binary: str,
        metrics_path: str = "/metrics",
        scrape_interval_s: float = 1.0,
        job_name: str = "reranker",
        ready_timeout_s: float = 30.0,
    ):
        self.target = target
        self.metrics_path = metrics_path
        self.scrape_interval_s = scrape_interval_s
        self.binary = binary
        self.job_name = job_name
        self.ready_timeout_s = ready_timeout_s
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self._tmpdir: Optional[str] = None
        self._log = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Optional[str]:
        return os.path.join(self._tmpdir, "prometheus.log") if self._tmpdir else None

    def start(self) -> "PrometheusServer":
        if self.proc is not None:
            raise PrometheusError("already started")
        self._tmpdir = tempfile.mkdtemp(prefix="prometheus-test-")
        interval = f"{max(int(self.scrape_interval_s * 1000), 100)}ms"
        config_path = os.path.join(self._tmpdir, "prometheus.yml")
        # JSON is valid YAML, so no yaml dependency here.
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": self.job_name,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "metrics_path": self.metrics_path,
                    "static_configs": [{"targets": [self.target]}],
                }
            ],
        }
        with open(config_path, "w") as f:
            json.dump(config, f)

        # Retry on the (unlikely) race where the free port is taken before we bind it.
        last_error = None
        for _ in range(3):
            self.port = free_port()
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={os.path.join(self._tmpdir, 'data')}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                self._wait_ready()
                return self
            except PrometheusError as exc:
                last_error = exc
                self._stop_process()
        self.stop()
        raise PrometheusError(f"Prometheus did not become ready: {last_error}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self.proc.returncode}: {self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:  # noqa: S310 - a local Prometheus
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise PrometheusError(f"not ready after {self.ready_timeout_s}s: {self._log_tail()}")

    def _log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def _stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM to our own child's PID only
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self._stop_process()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self.port = None

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------- API
    def query(self, promql: str, time_s: Optional[float] = None) -> List[Dict[str, Any]]:
        """Instant query; returns ``data.result`` (a list of {"metric": {...}, "value": [ts, "v"]}).

        A scalar/string result is wrapped as ``[{"metric": {}, "value": [ts, "v"]}]``.
        """
        params = {"query": promql}
        if time_s is not None:
            params["time"] = str(time_s)
        req = urllib.request.Request(  # noqa: S310 - a local Prometheus
            f"{self.url}/api/v1/query",
            data=urllib.parse.urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - a local Prometheus
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422 carry a JSON error body
            try:
                body = json.load(exc)
            except ValueError:
                raise PrometheusError(f"query {promql!r} failed: HTTP {exc.code}") from exc
        if body.get("status") != "success":
            raise PrometheusError(
                f"query {promql!r} failed: {body.get('errorType')}: {body.get('error')}"
            )
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_for(self, promql: str, timeout_s: float = 30.0, poll_s: float = 0.5) -> List[Dict[str, Any]]:
        """Poll ``query(promql)`` until it returns a non-empty result; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise PrometheusError(f"no result for {promql!r} after {timeout_s}s")
            time.sleep(poll_s)

    def targets(self) -> List[Dict[str, Any]]:
        """Active scrape targets (``/api/v1/targets``), e.g. to check ``health``/``lastError``."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as resp:  # noqa: S310 - a local Prometheus
            return json.load(resp)["data"]["activeTargets"]
