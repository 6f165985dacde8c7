"""Alerts and dashboard: every PromQL expression parses and names only metrics the
code exports (gateway, control plane, node agent) or Prometheus's own `up`; every panel
reads the ${datasource} variable."""

from __future__ import annotations

import json

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import CHART, by_kind, ci_objects

PROMETHEUS_OWN = {"up"}


def _names_of_families(families) -> set[str]:
    names = set()
    for family in families:
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


@pytest.fixture
def exported(db, monkeypatch) -> set[str]:
    """Metric names the code exports: the gateway's registry, the control plane's
    /metrics as rendered now, the node agent's collector."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    from controlplane.probes import render_metrics

    from gateway.metrics import Metrics
    from workers.agent.http import AgentStatus

    names = _names_of_families(Metrics().registry.collect())
    names |= _names_of_families(text_string_to_metric_families(render_metrics().decode()))
    agent = AgentStatus(
        node="n", heartbeat_seconds=10, loop_alive=lambda: True, last_report=lambda: (None, None)
    )
    names |= _names_of_families(agent.collect())
    assert {"gateway_requests_total", "platform_nodes", "agent_replicas"} <= names
    return names


def metric_names(expression: str) -> set[str]:
    names: set[str] = set()

    def visit(node, *_):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expression), visit)
    return names


def _rules():
    [rule] = by_kind(ci_objects(CHART / "ci" / "monitoring-values.yaml"), "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _dashboard() -> dict:
    return json.loads((CHART / "files" / "dashboards" / "platform.json").read_text())


def test_the_parser_sees_metric_names():
    assert metric_names('sum(rate(a_total{x="y"}[5m])) / b') == {"a_total", "b"}
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(a_total[5m])")


def test_alerts_parse_and_use_exported_metrics(exported):
    rules = _rules()
    alerts = {rule["alert"] for rule in rules}
    assert len(alerts) == len(rules) >= 11
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        unknown = names - exported - PROMETHEUS_OWN
        assert unknown == set(), (rule["alert"], unknown)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_alerts_cover_what_operators_page_on():
    used = set()
    for rule in _rules():
        used |= metric_names(rule["expr"])
    assert {
        "gateway_requests_total",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_usage_events_dropped_total",
        "gateway_redis_errors_total",
        "gateway_route_ejections_total",
        "platform_nodes",
        "platform_replicas",
        "agent_replica_kv_cache_usage_ratio",
        "platform_usage_stream_lag",
        "platform_usage_dead_letters",
        "up",
    } <= used


def test_dashboard_panels_parse_use_exported_metrics_and_the_datasource(exported):
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            unknown = metric_names(target["expr"]) - exported
            assert unknown == set(), (panel["title"], unknown)
