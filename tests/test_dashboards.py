"""The Grafana dashboard (ops/grafana) and the Prometheus alerting rules (ops/prometheus).

Both are checked for shape (a schema check of what Grafana and Prometheus need), their PromQL for
syntax (``promtool check rules`` when promtool is installed — Debian's ``prometheus`` package —
else a tokenizer that checks brackets, label matchers, ranges and function names), and every
metric they name against driftd's real ``/metrics`` text: the daemon's registry
(:class:`daemon.metrics.Metrics` behind :class:`daemon.probes.LiveMetrics`, as ``daemon.app``
builds them) rendered with prometheus_client, with the sample suffixes of each family's type
(``_total``, ``_bucket``/``_sum``/``_count``, ``_created``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from schema_defaults import holder

from daemon import package_version
from daemon.executor_status import ExecutorStatus
from daemon.metrics import PORTFOLIO_STATES, Metrics
from daemon.portfolio import PortfolioSpec, PortfolioState
from daemon.probes import LiveMetrics, Probes
from daemon.supervise import Supervised

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "ops" / "grafana" / "driftd-dashboard.json"
RULES = ROOT / "ops" / "prometheus" / "driftd-rules.yml"
PROMTOOL = shutil.which("promtool")
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
PROMETHEUS_METRICS = frozenset({"up"})
"""Series Prometheus makes itself (not driftd's): ``up`` of every scrape target."""
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
SEVERITIES = frozenset({"critical", "warning", "info"})
DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")
README_SECTIONS = frozenset(re.findall(r"^#+ (.+)$", (ROOT / "README.md").read_text(), re.M))

# ============================================================================ driftd's /metrics


class _Running:
    """The supervisor's view LiveMetrics reads: one running portfolio."""

    def __init__(self) -> None:
        async def never(_: PortfolioState) -> None:
            raise AssertionError("not run")

        state = PortfolioState(
            last_max_drift=Decimal("0.07"),
            last_success_at=NOW - timedelta(minutes=10),
            in_flight=True,
        )
        self.actors = {"main": Supervised(key="main", state=state, actor=never, status="running")}
        self.specs: dict[str, PortfolioSpec] = {}


class _Executor:
    def __init__(self) -> None:
        self.status = ExecutorStatus(
            signer="0x" + "11" * 20, next_nonce=7, unsettled=1, stuck_for=960.0
        )
        self.status.begin()


def live_metrics() -> LiveMetrics:
    """driftd's metrics as ``daemon.app`` wires them, with some of everything recorded."""
    metrics = Metrics(version=package_version(), now=lambda: NOW.timestamp())
    metrics.rebalance_finished(
        "main", "SUCCESS", execution_ms=4200, gas_usd=2.5, traded_usd=1000, slippage=0.002
    )
    metrics.rebalance_finished("main", "FAILED", execution_ms=900, gas_usd=1.0)
    metrics.price_tick("oracle", NOW.timestamp() - 30)
    metrics.price_tick_failed("oracle")
    metrics.price_head(NOW.timestamp() - 12)
    metrics.alert("HIGH_DRIFT")
    metrics.config_reloaded(ok=False, generation=2)
    probes = Probes(chain_ok=False, head_block=100, head_block_at=NOW - timedelta(seconds=20))
    return LiveMetrics(metrics, holder(), _Running(), _Executor(), lambda: NOW, probes)


def exported_names(text: str) -> set[str]:
    """Every sample name the exposition ``text`` declares: each family with the suffixes of its
    type (a family without samples yet — a labelled counter never incremented — counts too)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "stateset": ("",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def metrics_text() -> str:
    return live_metrics().render()


@pytest.fixture(scope="module")
def driftd_metrics(metrics_text: str) -> set[str]:
    return exported_names(metrics_text)


# ============================================================================ PromQL, superficially

FUNCTIONS = frozenset(
    [
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "days_in_month",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "deg",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "mad_over_time",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "pi",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_by_label",
        "sort_by_label_desc",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "vector",
        "year",
    ]
)
AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      |(?P<duration>[0-9]+(?:ms|[smhdwy])(?:[0-9]+(?:ms|[smhdwy]))*(?![A-Za-z0-9_]))
      |(?P<number>0x[0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)
      |(?P<ident>[A-Za-z_][A-Za-z0-9_:]*)
      |(?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){}\[\],:@])
      |(?P<space>\s+)""",
    re.X,
)
MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})
CLOSING = {"(": ")", "[": "]", "{": "}"}


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    at = 0
    while at < len(expr):
        match = TOKEN.match(expr, at)
        if match is None:
            raise ValueError(f"unexpected {expr[at : at + 10]!r} at {at}")
        assert match.lastgroup is not None
        if match.lastgroup != "space":
            out.append((match.lastgroup, match.group()))
        at = match.end()
    return out


def _closing(toks: list[tuple[str, str]], start: int) -> int:
    """The index of the bracket closing the one at ``start``; ValueError if unbalanced."""
    stack: list[str] = []
    for at in range(start, len(toks)):
        text = toks[at][1]
        if toks[at][0] != "op":
            continue
        if text in CLOSING:
            stack.append(CLOSING[text])
        elif text in CLOSING.values():
            if not stack or stack.pop() != text:
                raise ValueError(f"unbalanced {text!r}")
            if not stack:
                return at
    raise ValueError(f"unclosed {toks[start][1]!r}")


def _check_balanced(toks: list[tuple[str, str]]) -> None:
    stack: list[str] = []
    for kind, text in toks:
        if kind == "op" and text in CLOSING:
            stack.append(CLOSING[text])
        elif kind == "op" and text in CLOSING.values() and (not stack or stack.pop() != text):
            raise ValueError(f"unbalanced {text!r}")
    if stack:
        raise ValueError(f"unclosed bracket: {stack[-1]!r} missing")


def _check_matchers(inner: list[tuple[str, str]]) -> None:
    """``{name op "value", …}``: label matchers only."""
    at = 0
    while at < len(inner):
        if at + 3 > len(inner):
            raise ValueError(f"incomplete label matcher {inner[at:]}")
        (kind, _), (_, op), (value_kind, _) = inner[at : at + 3]
        if kind != "ident" or op not in MATCH_OPS or value_kind != "string":
            raise ValueError(f"bad label matcher {inner[at : at + 3]}")
        at += 3
        if at < len(inner):
            if inner[at][1] != ",":
                raise ValueError(f"expected ',' between label matchers, got {inner[at][1]!r}")
            at += 1


def _check_range(inner: list[tuple[str, str]]) -> None:
    """``[5m]`` or a subquery's ``[1h:1m]`` / ``[1h:]``."""
    shapes = (["duration"], ["duration", ":"], ["duration", ":", "duration"])
    shape = [kind if kind != "op" else text for kind, text in inner]
    if shape not in [list(s) for s in shapes]:
        raise ValueError(f"bad range {''.join(text for _, text in inner)!r}")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects; ValueError where it is malformed."""
    toks = tokens(expr)
    if not toks:
        raise ValueError("empty expression")
    _check_balanced(toks)
    names: set[str] = set()
    at = 0
    while at < len(toks):
        kind, text = toks[at]
        following = toks[at + 1][1] if at + 1 < len(toks) else None
        if kind == "op" and text in ("{", "["):
            end = _closing(toks, at)
            (_check_matchers if text == "{" else _check_range)(toks[at + 1 : end])
            at = end + 1
            continue
        if kind == "ident":
            word = text.lower()
            if word in GROUPING and following == "(":
                end = _closing(toks, at + 1)
                labels = toks[at + 2 : end]
                if any(k != "ident" and t != "," for k, t in labels):
                    raise ValueError(f"bad label list after {text}")
                at = end + 1
                continue
            if word in KEYWORDS or word in GROUPING:
                pass
            elif text in AGGREGATIONS and following in ("by", "without"):
                pass  # sum by (label) (…)
            elif following == "(":
                if text not in FUNCTIONS | AGGREGATIONS:
                    raise ValueError(f"unknown function {text}()")
            else:
                names.add(text)
        at += 1
    return names


def grafana_expr(expr: str, variables: set[str]) -> str:
    """A panel's query as Prometheus gets it: Grafana's variables interpolated."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        assert name in variables, f"undefined dashboard variable ${name} in {expr!r}"
        return ".*"

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def test_the_promql_checker_finds_names_and_refuses_malformed_queries() -> None:
    expr = (
        'sum by (job, le) (rate(a_bucket{job=~"x", le!="1"}[5m])) / on(job) group_left '
        "b_total offset 1h > bool 0.5 unless c[1h:1m] and max_over_time(d[10m:]) or vector(0)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}
    for bad in (
        "rate(a[5m]",
        "rate(a[5m]))",
        "sum(a})",
        'a{job="x"',
        "a{job}",
        'a{job=="x"}',
        "rat(a[5m])",
        "rate(a[5 m])",
        "a[5x]",
        "sum by (job (a)",
        "",
        "a # b",
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - the message varies by mistake
            metric_names(bad)


# ============================================================================ the dashboard


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row keeps its panels


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    text: str = query["query"] if isinstance(query, dict) else query
    return text


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL as Prometheus gets it) of every panel target and query variable."""
    variables = set(_variables(dashboard))
    queries = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel['title']!r} target {target['refId']}"
            queries.append((where, grafana_expr(target["expr"], variables)))
    for name, variable in _variables(dashboard).items():
        if variable["type"] == "query":
            # label_values(selector, label): the selector is PromQL.
            found = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", _variable_query(variable))
            assert found, f"variable {name}: expected label_values(selector, label)"
            queries.append((f"variable {name}", grafana_expr(found.group(1), variables)))
    return queries


def test_dashboard_is_an_importable_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["schemaVersion"] >= 36  # Grafana 9.x/10.x dashboards; 10 migrates them
    assert "id" not in dashboard or dashboard["id"] is None  # set by the Grafana it goes into
    variables = _variables(dashboard)
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["portfolio"]["type"] == "query"
    assert variables["portfolio"]["multi"]
    assert variables["portfolio"]["includeAll"]
    assert _variable_query(variables["portfolio"]).endswith(", portfolio)")
    for name, variable in variables.items():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, name


def test_dashboard_panels_are_laid_out_and_query_the_templated_datasource(
    dashboard: dict[str, Any],
) -> None:
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    occupied: dict[tuple[int, int], int] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert set(grid) >= {"h", "w", "x", "y"}, panel["id"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in "hwxy"), panel["id"]
        assert min(grid["w"], grid["h"]) >= 1, panel["id"]
        assert grid["x"] + grid["w"] <= 24, panel["id"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"panels {occupied[x, y]} and {panel['id']} overlap"
                occupied[x, y] = panel["id"]
        if panel["type"] == "row":
            continue
        assert panel["title"], panel["id"]
        assert panel.get("description"), panel["id"]
        assert panel["datasource"] == DATASOURCE, panel["id"]
        targets = panel["targets"]
        assert targets, f"panel {panel['id']} has no targets"
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["id"]
        for target in targets:
            assert target["datasource"] == DATASOURCE, (panel["id"], target["refId"])
            assert target["expr"].strip(), (panel["id"], target["refId"])


def test_dashboard_queries_are_promql(dashboard: dict[str, Any]) -> None:
    for where, expr in dashboard_queries(dashboard):
        try:
            metric_names(expr)
        except ValueError as exc:
            pytest.fail(f"{where}: {exc}: {expr}")


def test_dashboard_covers_what_an_operator_looks_at(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(e) for _, e in dashboard_queries(dashboard)))
    for needed in (
        "driftd_portfolio_max_drift_ratio",
        "driftd_drift_threshold_ratio",
        "driftd_rebalances_total",
        "driftd_gas_cost_usd_total",
        "driftd_executor_pending_transactions",
        "driftd_executor_stuck_seconds",
        "driftd_executor_signer_blocked",
        "driftd_executor_requested_rebalances",
        "driftd_price_last_tick_age_seconds",
        "driftd_price_tick_failures_total",
        "driftd_portfolio_state",
        "up",
    ):
        assert needed in used, needed


def test_every_metric_of_the_dashboard_is_in_driftds_metrics(
    dashboard: dict[str, Any], driftd_metrics: set[str]
) -> None:
    for where, expr in dashboard_queries(dashboard):
        missing = metric_names(expr) - driftd_metrics - PROMETHEUS_METRICS
        assert not missing, f"{where} uses metrics driftd does not export: {sorted(missing)}"


# ============================================================================ the rules


@pytest.fixture(scope="module")
def rule_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def _rules(rule_file: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in rule_file["groups"]:
        yield from group["rules"]


def test_rule_file_has_prometheus_rule_file_shape(rule_file: dict[str, Any]) -> None:
    assert set(rule_file) == {"groups"}
    names = [group["name"] for group in rule_file["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for group in rule_file["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert isinstance(rule["expr"], str), rule["alert"]
            assert rule["expr"].strip(), rule["alert"]
            if "for" in rule:
                assert DURATION.fullmatch(str(rule["for"])), rule["alert"]
            assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
            annotations = rule["annotations"]
            assert annotations["summary"], rule["alert"]
            assert annotations["description"], rule["alert"]
            for text in annotations.values():
                assert text.count("{{") == text.count("}}"), rule["alert"]
    alerts = [rule["alert"] for rule in _rules(rule_file)]
    assert len(alerts) == len(set(alerts)), "alert names must be unique"


def test_every_alert_points_at_a_readme_section(rule_file: dict[str, Any]) -> None:
    for rule in _rules(rule_file):
        description = " ".join(rule["annotations"]["description"].split())
        sections = re.findall(r'"([^"]+)"', description.split("README", 1)[-1])
        assert "README" in description, rule["alert"]
        assert sections, rule["alert"]
        for section in sections:
            assert section in README_SECTIONS, f"{rule['alert']}: no README section {section!r}"


def test_the_rules_cover_what_operators_expect(rule_file: dict[str, Any]) -> None:
    used = {name for rule in _rules(rule_file) for name in metric_names(rule["expr"])}
    alerts = {rule["alert"]: rule for rule in _rules(rule_file)}
    assert "up" in used  # the daemon down
    assert alerts["DriftdMetricsAbsent"]["expr"].startswith("absent(")
    for needed in (
        "driftd_price_last_tick_age_seconds",  # the price feed stale
        "driftd_executor_stuck_seconds",  # the executor stuck
        "driftd_rebalances_total",  # rebalance failures
        "driftd_portfolio_max_drift_ratio",  # high drift
    ):
        assert needed in used, needed
    assert {rule["labels"]["severity"] for rule in alerts.values()} == {"critical", "warning"}


def test_rule_expressions_are_promql_over_driftds_metrics(
    rule_file: dict[str, Any], driftd_metrics: set[str]
) -> None:
    for rule in _rules(rule_file):
        try:
            names = metric_names(rule["expr"])
        except ValueError as exc:
            pytest.fail(f"{rule['alert']}: {exc}")
        missing = names - driftd_metrics - PROMETHEUS_METRICS
        assert not missing, f"{rule['alert']} uses metrics driftd does not export: {missing}"


# ============================================================================ promtool

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus)"
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each query as a recording rule: promtool parses its PromQL with Prometheus' parser."""
    rules = [
        {"record": f"driftd_dashboard:query_{n}", "expr": expr}
        for n, (_, expr) in enumerate(dashboard_queries(dashboard))
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_fires_the_alerts_on_the_series_they_are_for(tmp_path: Path) -> None:
    """``promtool test rules``: a few alerts fire on the series they watch, and only then.
    (On a copy without annotations: promtool compares them too, and they are prose.)"""
    rule_file = yaml.safe_load(RULES.read_text())
    for group in rule_file["groups"]:
        for rule in group["rules"]:
            del rule["annotations"]
    rules = tmp_path / "driftd-rules.yml"
    rules.write_text(yaml.safe_dump(rule_file))
    target = 'job="driftd", instance="host:9464"'
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f"up{{{target}}}", "values": "1 1 0x10"},
                    {
                        "series": f"driftd_price_last_tick_age_seconds{{{target}}}",
                        "values": "30 90 150 210 270 330",
                    },
                    {"series": f"driftd_price_max_age_seconds{{{target}}}", "values": "120x10"},
                    {
                        "series": f"driftd_executor_stuck_seconds{{{target}}}",
                        "values": "0 0 700 760 820 880 940 1000 1060",
                    },
                    {
                        "series": f'driftd_portfolio_max_drift_ratio{{{target}, portfolio="main"}}',
                        "values": "0.3x30",
                    },
                    {"series": f"driftd_high_drift_alert_ratio{{{target}}}", "values": "0.25x30"},
                    {
                        "series": f'driftd_rebalances_total{{{target}, portfolio="main", '
                        'status="FAILED"}',
                        "values": "0 1 2 3 4 5",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "DriftdDown", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "DriftdDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "driftd",
                                    "instance": "host:9464",
                                }
                            }
                        ],
                    },
                    {"eval_time": "2m", "alertname": "DriftdPriceFeedStale", "exp_alerts": []},
                    {
                        "eval_time": "4m",
                        "alertname": "DriftdPriceFeedStale",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "driftd",
                                    "instance": "host:9464",
                                }
                            }
                        ],
                    },
                    {"eval_time": "4m", "alertname": "DriftdTransactionStuck", "exp_alerts": []},
                    {
                        "eval_time": "8m",
                        "alertname": "DriftdTransactionStuck",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "driftd",
                                    "instance": "host:9464",
                                }
                            }
                        ],
                    },
                    {"eval_time": "10m", "alertname": "DriftdHighDrift", "exp_alerts": []},
                    {
                        "eval_time": "20m",
                        "alertname": "DriftdHighDrift",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "job": "driftd",
                                    "instance": "host:9464",
                                    "portfolio": "main",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "5m",
                        "alertname": "DriftdRebalanceFailures",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "job": "driftd",
                                    "instance": "host:9464",
                                    "portfolio": "main",
                                }
                            }
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "driftd-rules.test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# ============================================================================ the new gauges


def test_live_metrics_export_executor_portfolio_probe_and_threshold_gauges(
    metrics_text: str,
) -> None:
    """What the dashboard and the rules read besides the seed's metrics, as LiveMetrics copies
    it in from the executor, the actors, the probes and the configuration at each scrape."""
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
    }
    config = holder().current
    assert values["driftd_executor_pending_transactions", ()] == 1
    assert values["driftd_executor_unsettled_transactions", ()] == 1
    assert values["driftd_executor_recovering_attempts", ()] == 0
    assert values["driftd_executor_signer_blocked", ()] == 0
    assert values["driftd_executor_stuck_seconds", ()] == 960
    assert values["driftd_database_up", ()] == 1
    assert values["driftd_chain_up", ()] == 0
    assert values["driftd_chain_head_block_age_seconds", ()] == 20
    assert values["driftd_drift_threshold_ratio", ()] == float(config.rebalance.drift_threshold)
    assert values["driftd_high_drift_alert_ratio", ()] == float(config.alerts.high_drift)
    assert values["driftd_price_max_age_seconds", ()] == config.prices.max_age
    assert values["driftd_executor_requested_rebalances", ()] == 1
    cooling = "cooling_down" if config.rebalance.cooldown_minutes > 10 else "running"
    states = {
        dict(labels)["state"]: value
        for (name, labels), value in values.items()
        if name == "driftd_portfolio_state"
    }
    assert states == {cooling: 1}
    assert cooling in PORTFOLIO_STATES


def test_a_portfolio_state_is_one_series_that_follows_its_changes() -> None:
    metrics = Metrics()
    metrics.portfolio_state_is("main", "running")
    metrics.portfolio_state_is("main", "parked")
    metrics.portfolio_state_is("alt", "paused")
    states = {
        (sample.labels["portfolio"], sample.labels["state"]): sample.value
        for family in text_string_to_metric_families(metrics.render())
        if family.name == "driftd_portfolio_state"
        for sample in family.samples
    }
    assert states == {("main", "parked"): 1, ("alt", "paused"): 1}
    metrics.retain_portfolios(["alt"])
    assert 'portfolio="main"' not in metrics.render()


def test_a_portfolio_no_longer_running_leaves_the_gauges() -> None:
    live = live_metrics()
    live.render()
    live.supervisor.actors.clear()
    names = {
        sample.labels.get("portfolio")
        for family in text_string_to_metric_families(live.render())
        if family.name.startswith("driftd_portfolio_")
        for sample in family.samples
    }
    assert names == set()
