"""Checks for k8s/monitoring: Grafana dashboard, PrometheusRule (+ promtool unit tests),
kustomization, and the tests/prometheus_server.py helper.

promtool and kubectl are found, or their tests skipped (failed under CI=true), by
tests/external_tools.py.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from external_tools import PROMETHEUS_HINT, require_tool
from k8s_helpers import render

pytestmark = pytest.mark.monitoring

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "k8s" / "monitoring"
DASHBOARD = MON / "grafana-dashboard.json"
RULE_CRD = MON / "prometheusrule.yaml"
RULES_TEST = MON / "rules_test.yaml"
KUSTOMIZATION = MON / "kustomization.yaml"
APP_METRICS = ROOT / "reranker" / "metrics.py"
# Override where Ray Serve's source is scanned (default: the installed ray.serve package).
SERVE_SRC = Path(os.environ["RAY_SERVE_SRC"]) if os.environ.get("RAY_SERVE_SRC") else None

FAILURE_REASONS = {
    "empty", "unauthenticated", "too_large", "validation", "overloaded",
    "not_ready", "deadline", "scorer_unavailable", "internal",
}
STAGES = {"validation", "tokenization", "queue_wait", "inference", "response"}
# Labels every exported series may carry besides its tag_keys: Ray Serve's automatic tags
# (ray/serve/metrics.py), Ray's exporter labels, Prometheus' target labels.
AUTO_LABELS = {
    "deployment", "replica", "application", "SessionName", "Component", "NodeAddress",
    "WorkerId", "ReportedBy", "instance", "job", "namespace", "pod", "container",
    "Version", "otel_scope_name",  # seen on a real Ray 2.60 export
    "ray_io_cluster", "ray_io_group",  # k8s/base/podmonitor.yaml relabelings
}
SEVERITIES = {"critical", "warning", "info"}


# --------------------------------------------------------------------------- loading
def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def load_rule_crd() -> dict:
    return yaml.safe_load(RULE_CRD.read_text())


def all_panels(dashboard: dict):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def data_panels(dashboard: dict):
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def dashboard_exprs(dashboard: dict):
    return [(p["title"], t["expr"]) for p in data_panels(dashboard) for t in p["targets"]]


def rules(crd: dict):
    return [rule for group in crd["spec"]["groups"] for rule in group["rules"]]


def alerts(crd: dict):
    return [rule for rule in rules(crd) if "alert" in rule]


def rule_exprs(crd: dict):
    return [(r.get("alert") or r.get("record"), r["expr"]) for r in rules(crd)]


# ------------------------------------------------------------------------ PromQL bits
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')


def _strip_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels, variables dropped)."""
    s = _strip_strings(expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range / subquery durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", s):
        name, is_call = m.group(1), m.group(2)
        if is_call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def promql_selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, {label names in its matcher}) for every `metric{...}` selector."""
    s = _strip_strings(expr)
    out = []
    for m in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", s):
        labels = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2)))
        out.append((m.group(1), labels))
    return out


def test_promql_name_extraction():
    expr = (
        'histogram_quantile(0.99, sum by (route, le) (rate(ray_a_bucket{application=~"$app",'
        ' x="y}"}[$__rate_interval]))) / ignoring (reason) group_left sum(ray_b_total offset 5m)'
        " > bool 1e3 and on() vector($scorer_max_replicas) or ray_c"
    )
    assert promql_metric_names(expr) == {"ray_a_bucket", "ray_b_total", "ray_c"}
    assert promql_selector_labels(expr) == [("ray_a_bucket", {"application", "x"})]


# ----------------------------------------------------------------- metric definitions
METRIC_CLASSES = {"Counter", "Gauge", "Histogram"}
# f-string placeholders Ray Serve uses in metric names.
FSTRING_VALUES = {"protocol_name": ("http", "grpc")}


def _resolve_strings(node, constants) -> list[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in constants:
        return [constants[node.id]]
    if isinstance(node, ast.JoinedStr):
        results = [""]
        for part in node.values:
            if isinstance(part, ast.Constant):
                results = [r + str(part.value) for r in results]
            elif (
                isinstance(part, ast.FormattedValue)
                and isinstance(part.value, ast.Name)
                and part.value.id in FSTRING_VALUES
            ):
                results = [r + v for r in results for v in FSTRING_VALUES[part.value.id]]
            else:
                return None
        return results
    return None


def _resolve_tag_keys(node, constants) -> set[str] | None:
    if isinstance(node, (ast.Tuple, ast.List)):
        keys = set()
        for elt in node.elts:
            vals = _resolve_strings(elt, constants)
            if vals is None:
                return None
            keys.update(vals)
        return keys
    if isinstance(node, ast.Constant) and node.value is None:
        return set()
    return None


def metric_definitions(source: str) -> dict[str, tuple[str, set[str] | None]]:
    """{definition name: (Counter|Gauge|Histogram, tag_keys or None if not literal)}."""
    tree = ast.parse(source)
    constants = {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
        and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    found = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if kind not in METRIC_CLASSES:
            continue
        kwargs = {k.arg: k.value for k in node.keywords}
        name_node = node.args[0] if node.args else kwargs.get("name")
        names = _resolve_strings(name_node, constants) if name_node is not None else None
        if not names:
            continue
        tag_pos = 3 if kind == "Histogram" else 2
        tag_node = kwargs.get("tag_keys", node.args[tag_pos] if len(node.args) > tag_pos else None)
        tags = set() if tag_node is None else _resolve_tag_keys(tag_node, constants)
        for name in names:
            if re.fullmatch(r"[A-Za-z_:][\w:]*", name):
                found[name] = (kind, tags)
    return found


def exported_names(definitions) -> dict[str, tuple[str, set[str] | None]]:
    """Prometheus series names Ray exports for each definition -> (definition, tags)."""
    out = {}
    for name, (kind, tags) in definitions.items():
        if kind == "Counter":
            series = [f"ray_{name}" if name.endswith("_total") else f"ray_{name}_total"]
        elif kind == "Histogram":
            series = [f"ray_{name}_{suffix}" for suffix in ("bucket", "sum", "count")]
        else:
            series = [f"ray_{name}"]
        for s in series:
            out[s] = (name, tags)
    return out


def serve_source_dir() -> Path:
    if SERVE_SRC is not None:
        return SERVE_SRC
    import importlib.util

    spec = importlib.util.find_spec("ray.serve")
    assert spec is not None and spec.submodule_search_locations, "ray[serve] is not installed"
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def serve_metrics():
    defs = {}
    for path in sorted(serve_source_dir().rglob("*.py")):
        if "tests" in path.parts or "examples" in path.parts:
            continue
        try:
            defs.update(metric_definitions(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError):
            continue
    exported = exported_names(defs)
    # The scanner must find the Serve metrics this repository relies on, with the right kind.
    for expected in (
        "ray_serve_num_http_requests_total",
        "ray_serve_deployment_queued_queries",
        "ray_serve_deployment_replica_healthy",
        "ray_serve_autoscaling_target_replicas",
        "ray_serve_batch_queue_length",
        "ray_serve_deployment_processing_latency_ms_bucket",
    ):
        assert expected in exported, f"scanner did not find {expected} in Ray Serve's source"
    return exported


@pytest.fixture(scope="module")
def app_metrics():
    exported = exported_names(metric_definitions(APP_METRICS.read_text()))
    assert exported, "no Counter/Gauge/Histogram definitions found in reranker/metrics.py"
    return exported


def referenced_metrics():
    refs = {}
    for where, expr in dashboard_exprs(load_dashboard()):
        for name in promql_metric_names(expr):
            refs.setdefault(name, []).append(f"dashboard panel {where!r}")
    for where, expr in rule_exprs(load_rule_crd()):
        for name in promql_metric_names(expr):
            refs.setdefault(name, []).append(f"rule {where!r}")
    return refs


def test_serve_metrics_referenced_exist(serve_metrics):
    refs = {n: w for n, w in referenced_metrics().items() if not n.startswith("ray_reranker_")}
    assert refs, "expected the assets to use Ray Serve's own metrics"
    missing = {n: w for n, w in refs.items() if n not in serve_metrics}
    assert not missing, f"not Ray Serve metrics (as exported by Ray {serve_source_dir()}): {missing}"


def test_app_metrics_referenced_exist(app_metrics, serve_metrics):
    refs = {n: w for n, w in referenced_metrics().items() if n.startswith("ray_reranker_")}
    assert refs
    missing = {n: w for n, w in refs.items() if n not in app_metrics and n not in serve_metrics}
    assert not missing, f"not defined in reranker/metrics.py: {missing}"


def test_selector_labels_are_metric_tags(app_metrics, serve_metrics):
    known = {**serve_metrics, **app_metrics}
    problems = []
    sources = dashboard_exprs(load_dashboard()) + rule_exprs(load_rule_crd())
    for where, expr in sources:
        for metric, labels in promql_selector_labels(expr):
            _, tags = known.get(metric, (None, None))
            if tags is None:  # unknown metric (reported elsewhere) or non-literal tag_keys
                continue
            allowed = tags | AUTO_LABELS | ({"le"} if metric.endswith("_bucket") else set())
            if labels - allowed:
                problems.append(f"{where}: {metric} has no label(s) {sorted(labels - allowed)}")
    assert not problems, problems


def histogram_boundaries(source: str, name: str) -> list[float] | None:
    """Literal `boundaries` of Histogram `name` in source, else None."""
    tree = ast.parse(source)
    assigned = {
        t.id: n.value for n in tree.body if isinstance(n, ast.Assign)
        for t in n.targets if isinstance(t, ast.Name)
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        kwargs = {k.arg: k.value for k in node.keywords}
        first = node.args[0] if node.args else kwargs.get("name")
        if not (isinstance(first, ast.Constant) and first.value == name):
            continue
        bounds = kwargs.get("boundaries", node.args[2] if len(node.args) > 2 else None)
        if isinstance(bounds, ast.Name):
            bounds = assigned.get(bounds.id)
        try:
            return [float(b) for b in ast.literal_eval(bounds)]
        except (ValueError, TypeError, SyntaxError):
            return None
    return None


def test_latency_buckets_cover_p99_threshold(app_metrics):
    """histogram_quantile cannot exceed the largest finite bucket: it must be above the alert."""
    (alert,) = [a for a in alerts(load_rule_crd()) if a["alert"] == "RerankerHighP99Latency"]
    threshold = float(re.search(r"\)\s*>\s*([\d.]+)\s*$", alert["expr"].strip()).group(1))
    bounds = histogram_boundaries(APP_METRICS.read_text(), "reranker_request_duration_seconds")
    assert bounds is not None, "reranker_request_duration_seconds boundaries are not a literal list"
    assert max(bounds) > threshold, f"largest bucket {max(bounds)}s <= p99 alert {threshold}s"


def test_label_values_in_closed_sets():
    sources = dashboard_exprs(load_dashboard()) + rule_exprs(load_rule_crd())
    for where, expr in sources:
        for label, allowed in (("reason", FAILURE_REASONS), ("stage", STAGES)):
            for value in re.findall(rf'\b{label}\s*=~?\s*"([^"]*)"', expr):
                assert set(value.split("|")) <= allowed, f"{where}: {label}={value!r}"


# ------------------------------------------------------------------ PrometheusRule
def test_prometheusrule_shape():
    crd = load_rule_crd()
    assert crd["apiVersion"] == "monitoring.coreos.com/v1"
    assert crd["kind"] == "PrometheusRule"
    assert crd["metadata"]["name"]
    names = [a["alert"] for a in alerts(crd)]
    assert len(names) == len(set(names)), "duplicate alert names"
    for alert in alerts(crd):
        name = alert["alert"]
        assert re.fullmatch(r"\d+[smh]", str(alert.get("for", ""))), f"{name}: needs `for:`"
        assert alert.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity label"
        ann = alert.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), f"{name}: summary/description"
    exprs = " ".join(a["expr"] for a in alerts(crd))
    # The alerts the issue asks for.
    assert 'status_code=~"5.."' in exprs and "ray_reranker_failures_total" in exprs
    assert "histogram_quantile(0.99" in exprs
    assert "ray_serve_autoscaling_target_replicas" in exprs
    assert 'ray_serve_deployment_replica_healthy{deployment="Scorer"}' in exprs


@pytest.fixture
def rules_dir(tmp_path):
    """spec of the PrometheusRule as a plain rule file, next to a copy of rules_test.yaml."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(load_rule_crd()["spec"], sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yaml")
    return tmp_path


def promtool(*args, cwd=None):
    return subprocess.run(
        [require_tool("promtool", PROMETHEUS_HINT), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_promtool_check_rules(rules_dir):
    res = promtool("check", "rules", rules_dir / "rules.yaml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules(load_rule_crd()))} rules found" in res.stdout


def test_promtool_unit_tests(rules_dir):
    res = promtool("test", "rules", rules_dir / "rules_test.yaml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_firing_and_quiet_unit_tests():
    suite = yaml.safe_load(RULES_TEST.read_text())
    assert suite["rule_files"] == ["rules.yaml"]
    firing, quiet = set(), set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts(load_rule_crd())}
    assert names - firing == set(), "alerts without a firing test"
    assert names - quiet == set(), "alerts without a not-firing test"
    assert (firing | quiet) <= names, "tests for alerts that do not exist"


def _mutants():
    for alert in alerts(load_rule_crd()):
        yield pytest.param(alert["alert"], "never", id=f"{alert['alert']}-never-fires")
        yield pytest.param(alert["alert"], "no_for", id=f"{alert['alert']}-without-for")


@pytest.mark.parametrize("alertname,mutation", list(_mutants()))
def test_unit_tests_catch_broken_alert(tmp_path, alertname, mutation):
    """The unit tests must fail if an alert never fires or loses its `for:`."""
    spec = copy.deepcopy(load_rule_crd()["spec"])
    for rule in (r for g in spec["groups"] for r in g["rules"]):
        if rule.get("alert") == alertname:
            if mutation == "never":
                rule["expr"] = f"({rule['expr']}) and on() vector(0) > 1"
            else:
                del rule["for"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yaml")
    res = promtool("test", "rules", tmp_path / "rules_test.yaml")
    assert res.returncode != 0, f"unit tests still pass with {alertname} mutated ({mutation})"
    assert alertname in res.stdout + res.stderr


# ------------------------------------------------------------------------ dashboard
BUILTIN_VARS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}


def grafana_vars(dashboard):
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_dashboard_structure():
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 38
    assert dash["uid"] and dash["title"]
    variables = grafana_vars(dash)
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus"

    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    panels = data_panels(dash)
    assert len(panels) >= 10
    for p in panels:
        title = p.get("title")
        assert title, f"panel {p['id']} has no title"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert p.get("targets"), f"{title}: no targets"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"{title}: duplicate refId"
        for t in p["targets"]:
            assert t.get("expr", "").strip(), f"{title}: target without expr"
            assert t.get("datasource", p["datasource"])["uid"] == "${datasource}", title
            used = set(re.findall(r"\$\{?(\w+)\}?", t["expr"]))
            assert used - BUILTIN_VARS <= set(variables), f"{title}: undefined {used}"
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, title


def test_dashboard_no_overlapping_panels():
    cells = {}
    for p in all_panels(load_dashboard()):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_dashboard_covers_the_issue():
    dash = load_dashboard()
    exprs = [e for _, e in dashboard_exprs(dash)]
    joined = "\n".join(exprs)

    def has(*parts):
        return any(all(part in e for part in parts) for e in exprs)

    # Throughput.
    assert has("rate(ray_reranker_requests_total")
    assert has("rate(ray_reranker_pairs_scored_total")
    # p50/p95/p99 per stage and per route.
    for q in ("0.5", "0.95", "0.99"):
        assert has(f"histogram_quantile({q}", "ray_reranker_stage_duration_seconds_bucket", "stage")
        assert has(f"histogram_quantile({q}", "ray_reranker_request_duration_seconds_bucket", "route")
    # Batch fill and padding.
    heatmaps = [p for p in data_panels(dash) if p["type"] == "heatmap"]
    heat_exprs = " ".join(t["expr"] for p in heatmaps for t in p["targets"])
    assert "ray_reranker_batch_pairs_bucket" in heat_exprs
    assert "ray_reranker_batch_padded_tokens_bucket" in heat_exprs
    assert "ray_reranker_padding_efficiency_ratio" in joined
    # Replicas per deployment against min and max.
    variables = grafana_vars(dash)
    for dep in ("Ingress", "Tokenizer", "Scorer"):
        low = dep.lower()
        assert has("ray_serve_deployment_replica_healthy", f'deployment="{dep}"')
        assert has(f"${low}_min_replicas") and has(f"${low}_max_replicas")
        assert int(variables[f"{low}_min_replicas"]["query"]) <= int(
            variables[f"{low}_max_replicas"]["query"]
        )
    # Errors by reason; queues.
    assert has("ray_reranker_failures_total", "by (reason)")
    assert has("ray_serve_deployment_queued_queries")
    assert has("ray_serve_batch_queue_length")


def test_dashboard_replica_bounds_match_k8s_base():
    """The min/max variables default to the autoscaling_config that k8s/base deploys."""
    services = [d for d in render(ROOT / "k8s" / "base") if d.get("kind") == "RayService"]
    assert services, "k8s/base renders no RayService"
    serve_config = yaml.safe_load(services[0]["spec"]["serveConfigV2"])
    variables = grafana_vars(load_dashboard())
    checked = 0
    for app in serve_config["applications"]:
        for dep in app.get("deployments", []):
            auto = dep.get("autoscaling_config")
            key = dep["name"].lower()
            if not auto or f"{key}_max_replicas" not in variables:
                continue
            for bound in ("min", "max"):
                got = variables[f"{key}_{bound}_replicas"]["query"]
                assert int(got) == auto[f"{bound}_replicas"], f"{key}_{bound}_replicas={got}, k8s/base: {auto}"
            checked += 1
    assert checked == 3, "expected autoscaling configs for Ingress, Tokenizer and Scorer"


def _grafana_to_promql(expr, variables):
    def sub(m):
        name = m.group(1) or m.group(2)
        if name in BUILTIN_VARS:
            return "5m"
        var = variables[name]
        if var["type"] == "textbox":
            return var["query"]
        return ".*"

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def test_dashboard_promql_parses(tmp_path):
    """Every dashboard expression, variables substituted, is valid PromQL (via promtool)."""
    dash = load_dashboard()
    variables = grafana_vars(dash)
    records = [
        {"record": f"dashboard:panel_{p['id']}_{t['refId']}",
         "expr": _grafana_to_promql(t["expr"], variables)}
        for p in data_panels(dash)
        for t in p["targets"]
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    res = promtool("check", "rules", path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(records)} rules found" in res.stdout


# ---------------------------------------------------------------------- kustomize
def test_kustomization():
    kust = yaml.safe_load(KUSTOMIZATION.read_text())
    assert "prometheusrule.yaml" in kust["resources"]
    for res in kust["resources"]:
        assert (MON / res).exists(), res
    (gen,) = kust["configMapGenerator"]
    files = [f.split("=", 1)[-1] for f in gen["files"]]
    assert files == ["grafana-dashboard.json"]
    assert gen["options"]["labels"]["grafana_dashboard"] == "1"
    assert gen["options"]["disableNameSuffixHash"] is True


def test_kustomize_build():
    docs = {d["kind"]: d for d in render(MON)}
    assert set(docs) == {"ConfigMap", "PrometheusRule"}
    cm = docs["ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert not re.search(r"-[a-z0-9]{10}$", cm["metadata"]["name"]), "name hash not disabled"
    (content,) = cm["data"].values()
    assert json.loads(content) == load_dashboard()
    assert docs["PrometheusRule"]["spec"] == load_rule_crd()["spec"]


def test_metrics_endpoint_passes_on_every_serve_metric_the_assets_use():
    """The app's /metrics re-emits a fixed list of Serve's families: every one the dashboard and rules use."""
    from reranker.metrics_export import exported, family_of

    used = {name for name in referenced_metrics() if name.startswith("ray_serve_")}
    assert used
    assert not {name for name in used if not exported(family_of(name))}
