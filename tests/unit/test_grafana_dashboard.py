"""The shipped Grafana dashboard: valid JSON whose queries use only metrics /metrics exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.server.metrics import METRICS

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboard.json"
METRIC_NAME = re.compile(r"\bcontrolplane_[a-z0-9_]+")


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    found = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def test_dashboard_queries_only_exported_metrics() -> None:
    """Every controlplane_* name the dashboard queries is a metric /metrics exports."""
    used = {name for expr in expressions(load()) for name in METRIC_NAME.findall(expr)}
    assert used <= set(METRICS), sorted(used - set(METRICS))


def test_dashboard_covers_what_an_sre_looks_at() -> None:
    """Backup age, archiving, WAL backlog, slots, subscriptions, instances and the task queue
    each have a panel."""
    used = {name for expr in expressions(load()) for name in METRIC_NAME.findall(expr)}
    for name in (
        "controlplane_backup_last_success_timestamp_seconds",
        "controlplane_archiver_failed_total",
        "controlplane_wal_ready_files",
        "controlplane_replication_slot_retained_bytes",
        "controlplane_subscription_up",
        "controlplane_instance_up",
        "controlplane_instance_timeline",
        "controlplane_task_queue_depth",
        "controlplane_recovery_window_start_timestamp_seconds",
    ):
        assert name in used, name


def test_dashboard_is_well_formed() -> None:
    """Unique panel ids, a Prometheus datasource variable on every query, and panels that fit
    the 24-column grid."""
    dashboard = load()
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "database", "node"} <= names
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package `prometheus`; scripts/bootstrap.sh --test)",
)
def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses every panel query (each checked as a recording rule)."""
    exprs = [t["expr"] for p in panels(load()) for t in p.get("targets", [])]
    group = {
        "name": "dashboard",
        "rules": [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)],
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    promtool = shutil.which("promtool")
    assert promtool is not None
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
