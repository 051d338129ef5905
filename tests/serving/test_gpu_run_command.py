"""README's GPU Run command, with its environment as written, on the simulated GPU (tier 3).

`serve run serve_config.gpu.yaml` refuses to start without a GPU, so the command runs behind a local
Ray that advertises one GPU (what `serve run` starts on a one-GPU machine), with the simulated-GPU
backend standing in for the device. With `RAY_SERVE_ENABLE_HA_PROXY=1` HAProxy, not Serve's Python
proxy, answers the HTTP port and hands each request to an ingress replica's own HTTP server. Scores
over HTTP equal the in-process scorer's, also when concurrent requests share tokenizer and scorer
calls; the stage CPU counters that benchmarks/gpu_serving_bench.py subtracts reach /metrics; a bad
request gets the service's JSON error; TEI's gRPC Rerank answers on the gRPC port; and Ctrl-C stops
every process, HAProxy among them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import yaml
from conftest import MULTILINGUAL_TEXTS, QUERY, REPO_ROOT
from ports import free_port
from readme_commands import readme_run_command
from reference import Ours
from serving_helpers import (
    ctrl_c_stops_every_process,
    kill_process_tree,
    metric_samples,
    metric_sum,
    poll,
    process_tree,
    wait_until_ready,
)

from reranker.proto import tei_pb2, tei_pb2_grpc

pytestmark = [pytest.mark.serving, pytest.mark.slow, pytest.mark.own_ray]

# `serve run ARGS` on a local Ray that advertises one GPU; `serve run` reuses an initialized Ray.
LAUNCHER = """
import sys
import ray
from ray.serve._private.constants import SERVE_NAMESPACE
from ray.serve.scripts import cli
ray.init(address="local", num_gpus=1, include_dashboard=False, namespace=SERVE_NAMESPACE)
sys.exit(cli.main(["run", *sys.argv[1:]], prog_name="serve"))
"""


def listeners(processes: list, port: int) -> list[str]:
    """Names of the processes listening on 127.0.0.1:port."""
    import psutil

    names = []
    for process in processes:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp")):
                names.append(process.name())
        except psutil.Error:
            pass
    return names


def raw_scores(answer: httpx.Response, count: int) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    got = np.empty(count)
    for item in answer.json():
        got[item["index"]] = item["score"]
    return got


def calls_carrying_several_parts(base: str):
    """Per callee: (calls, calls with one part), once some call of each carried more than one part."""
    text = httpx.get(base + "/metrics", timeout=30).text
    found = {}
    for callee in ("Tokenizer", "Scorer"):
        labels = {"application": "reranker", "callee": callee}
        calls = metric_sum(text, "ray_reranker_parts_per_call_count", **labels)
        single = sum(
            sample.value
            for sample in metric_samples(text, "ray_reranker_parts_per_call_bucket", **labels)
            if float(sample.labels["le"]) == 1
        )
        if not single < calls:
            return None
        found[callee] = (calls, single)
    return found


@pytest.mark.timeout(420)
def test_readme_gpu_command_serves_through_haproxy_and_stops_on_ctrl_c(tiny_model_dir, tmp_path):

    command = readme_run_command("serve_config.gpu.yaml")
    assert command, "README.md has no Run command for serve_config.gpu.yaml"
    env, argv = command
    assert argv == [".venv/bin/serve", "run", "serve_config.gpu.yaml"], argv
    assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1", env
    config = yaml.safe_load((REPO_ROOT / "serve_config.gpu.yaml").read_text())
    port = free_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    config["grpc_options"]["port"] = free_port()
    config_path = tmp_path / "serve_config.gpu.yaml"
    config_path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(config_path)], cwd=REPO_ROOT,
        env={**os.environ, **env, "RERANKER_MODEL": str(tiny_model_dir), "RERANKER_BACKEND": "simulated-gpu"},
        stdout=(tmp_path / "run.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    started: list = []
    try:
        wait_until_ready(process, base, 240, tmp_path / "run.log")
        started = process_tree(process.pid)
        assert listeners(started, port) == ["haproxy"], [" ".join(p.cmdline()) for p in started]

        ours = Ours(tiny_model_dir, backend="simulated-gpu")
        with httpx.Client(base_url=base, timeout=60) as client:
            answer = client.post("/rerank", json={"query": QUERY, "texts": MULTILINGUAL_TEXTS, "raw_scores": True},
                                 headers={"x-request-id": "gpu-run-1"})
            assert answer.headers.get("x-request-id") == "gpu-run-1", answer.headers
            np.testing.assert_array_equal(raw_scores(answer, len(MULTILINGUAL_TEXTS)),
                                          ours.score(QUERY, MULTILINGUAL_TEXTS)[1].raw.astype(np.float64))
            scorers = client.get("/info").json()["scorers"]  # replicas_per_gpu.scorer on the one GPU
            assert scorers and all((s["backend"], s["max_batch_tokens"]) == ("simulated-gpu", 32768) for s in scorers), scorers
            bad = client.post("/rerank", json={"query": QUERY})
            assert bad.status_code == 422 and bad.json()["error_type"] == "validation", bad.text
            http_ranks = [(item["index"], float(np.float32(item["score"]))) for item in
                          client.post("/rerank", json={"query": QUERY, "texts": MULTILINGUAL_TEXTS}).json()]

        # TEI's gRPC Rerank on the config's gRPC port: HAProxy hands it to the ingress replica too.
        channel = grpc.insecure_channel(f"127.0.0.1:{config['grpc_options']['port']}")
        try:
            stub = tei_pb2_grpc.RerankStub(channel)
            response = stub.Rerank(tei_pb2.RerankRequest(query=QUERY, texts=MULTILINGUAL_TEXTS), timeout=60)
            assert [(rank.index, rank.score) for rank in response.ranks] == http_ranks
            with pytest.raises(grpc.RpcError) as failure:
                stub.Rerank(tei_pb2.RerankRequest(query=QUERY), timeout=60)
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value
        finally:
            channel.close()

        # 24 concurrent requests, each its own rotation of the passages: every answer is its own,
        # and with 2 calls in flight per callee (the GPU config) some calls carry several requests.
        # Each client opens its connection first and all post at one moment, so the requests
        # reach the ingress together however slow the machine is to start threads and connect.
        variants = [MULTILINGUAL_TEXTS[i % 5:] + MULTILINGUAL_TEXTS[: i % 5] for i in range(24)]
        queries = [f"{QUERY} {i}" for i in range(24)]
        together = threading.Barrier(24)

        def rerank(i: int) -> np.ndarray:
            body = {"query": queries[i], "texts": variants[i], "raw_scores": True}
            with httpx.Client(base_url=base, timeout=60) as client:
                assert client.get("/health").status_code == 200  # the connection, open before the burst
                together.wait(timeout=60)
                return raw_scores(client.post("/rerank", json=body), len(variants[i]))

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(rerank, range(24)))
        for i, got in enumerate(answers):
            np.testing.assert_array_equal(got, ours.score(queries[i], variants[i])[1].raw.astype(np.float64))
        # Ray's exported histogram _sum is not exact, so count calls, not parts.
        for callee, (calls, single) in poll(lambda: calls_carrying_several_parts(base), 30, "a coalesced call per callee").items():
            assert 1 <= calls < 26, (callee, calls, single)

        def stage_cpu_recorded():
            text = httpx.get(base + "/metrics", timeout=30).text
            return all(
                metric_sum(text, "ray_reranker_stage_cpu_seconds_total", application="reranker", stage=stage) > 0
                for stage in ("tokenization", "inference")
            ) and metric_sum(text, "ray_reranker_padded_tokens_total", application="reranker") > 0

        poll(stage_cpu_recorded, 30, "the stage CPU seconds and the padded tokens in /metrics")
        # Serve's own request count (the RerankerOverloaded alert's series) comes from HAProxy's log here.
        poll(lambda: metric_sum(httpx.get(base + "/metrics", timeout=30).text, "ray_serve_num_http_requests_total",
                                application="reranker", status_code="200") >= 26, 30, "Serve's HTTP request count in /metrics")

        started = process_tree(process.pid)
        ctrl_c_stops_every_process(process, wait_s=150, log_path=tmp_path / "run.log")
    finally:
        kill_process_tree(process, started)
