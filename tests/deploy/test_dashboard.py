"""The Grafana dashboard (deploy/grafana/ragstream.json) charts every metric the stages export
(shared.metrics) and the gateway's, names no series that does not exist, takes its data source
and namespace from variables (so it imports into any Grafana), and lays its panels out without
overlaps."""

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from shared import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ragstream.json"
GATEWAY_METRICS = {
    "ragstream_gateway_requests": "counter",
    "ragstream_gateway_request_seconds": "histogram",
}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def families() -> dict[str, str]:
    """Every metric family a ragstream process exports: name → type."""
    exported = {
        family.name: family.type
        for collector in vars(metrics).values()
        if isinstance(collector, MetricWrapperBase)
        for family in collector.describe()
    }
    return {**exported, **GATEWAY_METRICS}


def charts() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def test_every_metric_is_charted_and_every_charted_series_exists() -> None:
    series = {
        name + suffix: name
        for name, kind in families().items()
        for suffix in SUFFIXES[kind]
    }  # fmt: skip
    charted: set[str] = set()
    for panel in charts():
        for target in panel["targets"]:
            names = set(re.findall(r"\bragstream_\w+", target["expr"]))
            assert names <= series.keys(), (panel["title"], names - series.keys())
            charted |= {series[name] for name in names}
            if "histogram_quantile" in target["expr"]:
                assert all(name.endswith("_bucket") for name in names), target["expr"]
                assert re.search(r"sum by \(le\b", target["expr"]), target["expr"]
    assert charted == families().keys()


def test_queries_use_the_dashboard_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace"}
    for panel in charts():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            for metric in re.finditer(r"\bragstream_\w+(\{[^}]*\})?", target["expr"]):
                assert 'namespace="$namespace"' in (metric[1] or ""), target["expr"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, panel["title"]
        cells |= area
