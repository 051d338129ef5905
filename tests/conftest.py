"""Shared fixtures: tiny models on disk, and (in test_serving*) one real local Ray for the session."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Tests never download anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The CPU scorer exports ONNX files of each tiny model; keep them out of ~/.cache. Set before
# Ray starts, so every replica of the session inherits it; pytest-xdist's workers inherit the
# controller's, which removes it at exit.
if "RERANKER_ONNX_CACHE_DIR" not in os.environ:
    os.environ["RERANKER_ONNX_CACHE_DIR"] = tempfile.mkdtemp(prefix="reranker-onnx-")
    atexit.register(shutil.rmtree, os.environ["RERANKER_ONNX_CACHE_DIR"], ignore_errors=True)
# The session's export cache: served apps read it from the environment; settings built in a test
# pass it as onnx_cache_dir (without it they would export into ~/.cache).
ONNX_CACHE_DIR = os.environ["RERANKER_ONNX_CACHE_DIR"]

from tiny_models import save_tiny_model  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def exports_stay_in_the_session_cache():
    """Fails the session if a test exported into the user's cache: settings built without
    `onnx_cache_dir` (not from the environment) export into ~/.cache/reranker/onnx."""
    from reranker.backends.onnx import default_cache_root

    root = default_cache_root()
    before = set(root.iterdir()) if root.is_dir() else set()
    yield
    after = set(root.iterdir()) if root.is_dir() else set()
    assert after <= before, f"tests exported into {root}, not the session's {ONNX_CACHE_DIR}: {sorted(map(str, after - before))}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-label tiny random BERT cross-encoder, like the amberoad model."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny2"), num_labels=2)


@pytest.fixture(scope="session")
def tiny_model_dir_1label(tmp_path_factory) -> Path:
    """A 1-label tiny random BERT cross-encoder, like ms-marco MiniLM."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny1"), num_labels=1, seed=1)


# ----- real Ray Serve, once per session ---------------------------------------------------------

import copy  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

from ports import free_port  # noqa: E402


def load_serve_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())


class ServeCluster:
    """A local Ray with Serve on 127.0.0.1, started by this test session and stopped by it."""

    def __init__(self, model_dir: Path):
        import ray

        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ["RERANKER_MODEL"] = str(model_dir)
        # Metrics reach the node's agent every second instead of every ten.
        os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
        # A replica that cannot start fails its deployment at the first try instead of Serve's
        # three: each try of the truncated model in test_faults.py spends seconds on 2 cores.
        os.environ.setdefault("RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT", "1")
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _metrics_export_port=self.metrics_port,
            log_to_driver=False,
        )
        self.base_config = load_serve_config()
        config = copy.deepcopy(self.base_config)
        config["http_options"].update(host="127.0.0.1", port=self.http_port)
        config["grpc_options"].update(port=self.grpc_port)
        self.deploy(config)
        self.wait_ready("/")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def deploy(self, config: dict) -> None:
        """Deploys a full config the way `serve deploy` / `serve run config.yaml` do."""
        from ray.serve._private.api import serve_start
        from ray.serve.schema import ServeDeploySchema

        schema = ServeDeploySchema.model_validate(config)
        client = serve_start(
            http_options=schema.http_options.model_dump(),
            grpc_options=schema.grpc_options.model_dump(),
            proxy_location=schema.proxy_location,
        )
        client.deploy_apps(schema, _blocking=False)
        self.current_config = config

    def add_app(self, app: dict) -> None:
        """Deploys one more application beside the current ones (declarative: the list is the truth)."""
        config = copy.deepcopy(self.current_config)
        config["applications"] = [a for a in config["applications"] if a["name"] != app["name"]] + [app]
        self.deploy(config)

    def remove_app(self, name: str) -> None:
        config = copy.deepcopy(self.current_config)
        config["applications"] = [a for a in config["applications"] if a["name"] != name]
        self.deploy(config)

    def wait_ready(self, prefix: str, timeout_s: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = httpx.get(f"{self.url}{prefix.rstrip('/')}/ready", timeout=10)
                if last.status_code == 200:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.5)
        raise AssertionError(f"app at {prefix} not ready in {timeout_s}s: {getattr(last, 'text', last)}")

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def reranker_app(name: str, route_prefix: str, args: dict | None = None, env: dict | None = None, **overrides) -> dict:
    """An application entry built from serve_config.yaml's, under another name and prefix."""
    app = copy.deepcopy(load_serve_config()["applications"][0])
    app.update(name=name, route_prefix=route_prefix)
    app["args"] = {**app.get("args", {}), **(args or {})}
    if env:
        app["runtime_env"] = {"env_vars": env}
    for deployment in app["deployments"]:
        deployment.update(overrides.get(deployment["name"], {}))
    return app


# ----- two pytest-xdist workers (scripts/test.sh runs `-n 2`) ------------------------------------
# The tiers that start Ray keep one worker and run in order, as without xdist: serving/ (the
# session's Ray, and the README commands' own) and cluster/ (the rehearsal's). The in-process tiers
# run in the second worker at the lowest CPU priority, so they fill the cores the first leaves idle
# (about a third of the time, mostly waits on Serve) instead of taking CPU from it. A Ray cannot
# start at that priority beside a busy first worker: its start-up RPCs pass their deadlines.

FOREGROUND_TIERS = ("serving", "cluster")


def in_foreground(nodeid: str) -> bool:
    """Whether a test (by node id, "tests/<tier>/test_x.py::...") belongs to the first worker."""
    parts = nodeid.split("::", 1)[0].split("/")
    return len(parts) > 1 and parts[0] == "tests" and parts[1] in FOREGROUND_TIERS


def pytest_configure(config):
    """A shell starts a background job (`cmd &`, nohup) with SIGINT ignored, and what it starts
    inherits that: the README commands' tests would send a Ctrl-C that their command never sees
    (it then ran out of the 90 s the test gives it to stop). Ctrl-C acts as in a terminal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's load-scope scheduling with two scopes, so each worker takes one (xdist's own
    `--dist loadgroup` cannot be used: its group names do not reach pytest 9's node ids)."""
    from xdist.scheduler import LoadScopeScheduling

    class ForegroundAndBackground(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "foreground" if in_foreground(nodeid) else "background"

    return ForegroundAndBackground(config, log)


def pytest_collection_modifyitems(config, items):
    """The tests that start their own Ray (marked own_ray) run last, the others in their order. The
    session's Ray is stopped before them (pytest_runtest_setup): it costs about 0.2 of the 2 cores
    even idle. In the two-worker run they also no longer meet the in-process tiers' ONNX exports:
    the rehearsal took 191 s first in the order, beside them, and 138 s last (fresh clones, the
    same hour; pytest 902 s and 782 s)."""
    items.sort(key=lambda item: item.get_closest_marker("own_ray") is not None)


def pytest_runtest_setup(item):
    if item.get_closest_marker("own_ray"):
        stop_session_ray()
    if hasattr(item.config, "workerinput") and not in_foreground(item.nodeid) and os.path.isdir("/proc/self/task"):
        if os.getpriority(os.PRIO_PROCESS, 0) == 19:  # done at this worker's first test
            return
        # Every thread of the background worker, and so what it starts later, at nice 19 (Linux).
        for task in os.listdir("/proc/self/task"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(task), 19)
            except OSError:  # a thread that has just ended
                pass


_session_ray: list[ServeCluster] = []  # the session's Ray while it runs


def stop_session_ray() -> None:
    while _session_ray:
        _session_ray.pop().stop()


@pytest.fixture(scope="session")
def serve_cluster(tiny_model_dir):
    cluster = ServeCluster(tiny_model_dir)
    _session_ray.append(cluster)
    yield cluster
    stop_session_ray()


@pytest.fixture(scope="session")
def http(serve_cluster):
    import httpx

    with httpx.Client(base_url=serve_cluster.url, timeout=60) as client:
        yield client


# ----- scoring core (tier 1 and 2) ---------------------------------------------------------------

QUERY = "what is the capital of france"
# One passage per script the service must handle, plus emoji and mixed-language text.
MULTILINGUAL_TEXTS = [
    "paris is the capital and most populous city of france",
    "berlin ist die hauptstadt von deutschland",
    "столица россии москва",
    "東京は日本の首都です",
    "القاهرة هي عاصمة مصر",
    "नई दिल्ली भारत की राजधानी है",
    "emoji test 🙂 🚀 ✨",
    "mixed paris и москва 東京",
]
LONG_PASSAGE = "the quick brown fox jumps over the lazy dog " * 80  # 720 tokens: truncated at 512

# (query, passage) pairs across scripts, with one passage past 512 tokens and one empty passage.
MULTILINGUAL_PAIRS = [
    ("what is the capital of france", "paris is the capital and most populous city of france"),
    ("Столица России?", "столица россии москва"),
    ("日本の首都", "東京は日本の首都です"),
    ("北京", "北京是中国的首都"),
    ("서울", "서울은 대한민국의 수도이다"),
    ("عاصمة مصر", "القاهرة هي عاصمة مصر"),
    ("भारत की राजधानी", "नई दिल्ली भारत की राजधानी है"),
    ("emoji 🙂", "emoji test 🙂 🚀 ✨"),
    ("Paris или Москва", "mixed paris и москва 東京, madrid es la capital de España"),
    ("Ñandú xyz", "roma è la capitale d'italia"),
    ("the lazy dog", LONG_PASSAGE),
    ("what is the capital of france", ""),
]


@pytest.fixture(scope="session")
def tiny_model_dir_3label(tmp_path_factory) -> Path:
    """A 3-label tiny cross-encoder with named labels: needs relevant_label."""
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny3"), num_labels=3, seed=2, id2label={0: "negative", 1: "neutral", 2: "relevant"}
    )


@pytest.fixture(scope="session")
def tiny_model_dir_base(tmp_path_factory) -> Path:
    """A tiny BertModel without a classification head."""
    return save_tiny_model(tmp_path_factory.mktemp("tinybase"), architecture="base")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from reranker.model_files import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))
