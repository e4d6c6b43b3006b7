"""The shipped Prometheus alert rules: valid, unit-tested by promtool, and over real metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.server.metrics import METRICS

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
# Two files: promtool's evaluation interval is per file, and the backup rules look days back.
RULE_TESTS = (RULES_DIR / "alerts_test.yml", RULES_DIR / "alerts_backups_test.yml")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`; scripts/bootstrap.sh --test)",
)
METRIC_NAME = re.compile(r"\bcontrolplane_[a-z0-9_]+")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` finds every rule well-formed."""
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    """Every case of the promtool test files holds: each rule fires on its series, and only
    there."""
    tested = promtool("test", "rules", *RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("SUCCESS") == len(RULE_TESTS), tested.stdout


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    """The promtool tests check each alert both where it must fire and where it must not."""
    cases = [
        case
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for rule in rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']} never fires in a test"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']} has no quiet case"


def test_rules_say_what_to_do_and_how_bad() -> None:
    """Every alert carries a severity, a summary and a description."""
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_rules_query_only_exported_metrics() -> None:
    """Every controlplane_* name in a rule's expression is a metric /metrics exports."""
    used = {name for rule in rules() for name in METRIC_NAME.findall(rule["expr"])}
    assert used, "no controlplane metric in the rules"
    assert used <= set(METRICS), sorted(used - set(METRICS))
