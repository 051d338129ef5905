"""README's Run command, run as written (on a tiny model, with the ports moved): `scripts/serve.py`
starts a local Ray without the dashboard's processes and Serve's own `serve run` on it; the scorer
exports the model to ONNX (an empty cache, as at a first start); the app answers; and Ctrl-C stops
every process it started.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
import yaml
from conftest import MULTILINGUAL_TEXTS, QUERY, REPO_ROOT
from ports import free_port
from readme_commands import readme_run_command
from serving_helpers import ctrl_c_stops_every_process, kill_process_tree, process_tree, wait_until_ready

from reranker.backends.onnx import FP32_FILE

pytestmark = [pytest.mark.serving, pytest.mark.slow, pytest.mark.own_ray]


@pytest.mark.timeout(300)
def test_readme_run_command_serves_without_the_dashboard_and_stops_on_ctrl_c(tiny_model_dir, tmp_path):
    import psutil

    command = readme_run_command("serve_config.yaml")
    assert command, "README.md has no Run command for serve_config.yaml"
    env, argv = command
    assert argv[:2] == [".venv/bin/python", "scripts/serve.py"] and argv[-1] == "serve_config.yaml", argv
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    if config.get("grpc_options"):
        config["grpc_options"]["port"] = free_port()
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, *argv[1:-1], str(config_path)]
    # An empty ONNX cache, as on a new user's first start: the scorer replica exports in a child.
    onnx_cache = tmp_path / "onnx"
    process = subprocess.Popen(
        command, cwd=REPO_ROOT,
        env={**os.environ, **env, "RERANKER_MODEL": str(tiny_model_dir), "RERANKER_ONNX_CACHE_DIR": str(onnx_cache)},
        stdout=(tmp_path / "run.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    started: list = []
    try:
        wait_until_ready(process, f"http://127.0.0.1:{port}", 180, tmp_path / "run.log")
        answer = httpx.post(f"http://127.0.0.1:{port}/rerank", json={"query": QUERY, "texts": MULTILINGUAL_TEXTS}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()) == len(MULTILINGUAL_TEXTS)
        assert [path.name for path in onnx_cache.rglob("*.onnx")] == [FP32_FILE], sorted(onnx_cache.rglob("*"))

        started = process_tree(process.pid)
        commands = []
        for child in started:
            try:
                commands.append(" ".join(child.cmdline()))
            except psutil.Error:
                pass
        replicas = [c for c in commands if c.startswith("ray::ServeReplica:reranker:")]
        assert len(replicas) == 3, commands
        # `serve run` alone would also start nine dashboard modules, a forkserver and a resource tracker.
        assert not [c for c in commands if "ray-dashboard-" in c or "forkserver" in c], commands

        ctrl_c_stops_every_process(process, wait_s=90, log_path=tmp_path / "run.log")
    finally:
        kill_process_tree(process, started)
