"""Setting rules read from PostgreSQL 15 (recorded `--describe-config` and probe output) and
the checks of postgresql_conf values against them and against the control plane's own rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from controlplane.errors import InvalidInputError
from controlplane.spec import parse_database_request
from controlplane.spec.pg_settings import (
    SettingRule,
    SettingRules,
    build_rules,
    parse_describe_config,
    parse_probe_log,
    probe_config,
    value_problem,
)
from controlplane.spec.pg_values import UNKNOWN_UNIT, parse_bool
from controlplane.spec.postgresql_conf import (
    MESH_MINIMUMS,
    check_postgresql_conf,
    quote_conf,
    setting_problem,
)

DATA = Path(__file__).parent / "data"
DESCRIBE = (DATA / "pg15_describe_config.tsv").read_text()
PROBE_LOG = (DATA / "pg15_probe.log").read_text()


def rules() -> SettingRules:
    return build_rules(DESCRIBE, PROBE_LOG, source="recorded postgres 15")


def rule(name: str) -> SettingRule:
    found = rules().get(name)
    assert found is not None, name
    return found


def test_describe_config_gives_every_setting_with_context_type_and_range() -> None:
    """Every line of --describe-config becomes a rule with its context, type and bounds."""
    parsed = {r.name: r for r in parse_describe_config(DESCRIBE)}
    assert len(parsed) == len(DESCRIBE.strip().splitlines()) == 307
    assert parsed["shared_buffers"] == SettingRule(
        name="shared_buffers", context="postmaster", type="integer", min=16, max=1073741823
    )
    assert parsed["TimeZone"].type == "string"
    assert parsed["ssl"].type == "bool" and parsed["ssl"].context == "sighup"
    assert parsed["seq_page_cost"].max is not None and parsed["seq_page_cost"].max > 1e308


def test_probe_config_sets_numbers_past_their_range_and_enums_to_no_value() -> None:
    """The probe file asks the server for what --describe-config leaves out."""
    text = probe_config(parse_describe_config(DESCRIBE))
    lines = set(text.splitlines())
    assert "shared_buffers = '15'" in lines  # min 16
    assert "log_min_duration_statement = '-2'" in lines  # min -1
    assert "huge_pages = 'cp-probe-not-a-value'" in lines
    assert not any(
        line.startswith(("TimeZone", "ssl ", "max_pred_locks_per_relation")) for line in lines
    )


def test_probe_log_gives_base_units_and_enum_values() -> None:
    """The server's range errors name each base unit, its hints list each enum's values."""
    units, enums = parse_probe_log(PROBE_LOG)
    assert units["shared_buffers"] == "8kB"
    assert units["work_mem"] == "kB"
    assert units["max_wal_size"] == "MB"
    assert units["checkpoint_timeout"] == "s"
    assert units["vacuum_cost_delay"] == "ms"
    assert units["max_connections"] is None
    assert enums["huge_pages"] == ("off", "on", "try")
    assert enums["wal_level"] == ("minimal", "replica", "logical")


def test_every_recorded_setting_is_fully_described() -> None:
    """Only a setting whose range spans every integer has no probed unit; every enum has
    values."""
    table = rules()
    described = [table.get(name) for name in table.names()]
    assert len(table) == 307
    unknown = [r.name for r in described if r is not None and r.unit == UNKNOWN_UNIT]
    assert unknown == ["max_pred_locks_per_relation"]
    assert all(r.enum_values for r in described if r is not None and r.type == "enum")
    assert table.get("timezone") is table.get("TimeZone")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *(("on", True), ("ON", True), ("of", False), ("off", False), ("t", True), ("TRU", True)),
        *(("f", False), ("y", True), ("n", False), ("1", True), ("0", False), ("yes", True)),
        *(("o", None), ("", None), ("2", None), ("onn", None), ("truth", None), ("01", None)),
    ],
)
def test_parse_bool_like_the_server(text: str, value: bool | None) -> None:
    """Booleans accept unique prefixes of true/false/yes/no, on/off and 1/0, in any case."""
    assert parse_bool(text) is value


@pytest.mark.parametrize(
    ("name", "text"),
    [
        *(("shared_buffers", "128MB"), ("shared_buffers", "16"), ("shared_buffers", "1GB ")),
        *(("shared_buffers", "7TB"), ("work_mem", "64kB"), ("work_mem", "1.5MB")),
        *(("work_mem", "0x40"), ("max_connections", "010"), ("max_connections", "1e2")),
        *(("checkpoint_timeout", "5min"), ("checkpoint_timeout", "1d"), ("statement_timeout", "0")),
        *(("vacuum_cost_delay", "500us"), ("seq_page_cost", "1e308"), ("huge_pages", "TRY")),
        *(("huge_pages", "true"), ("synchronous_commit", "remote_apply"), ("jit", "of")),
        *(("log_min_duration_statement", "-1"), ("TimeZone", "Mars/Olympus")),
    ],
)
def test_values_the_server_takes(name: str, text: str) -> None:
    """Values with units, prefixes, hex, octal, exponents or enum synonyms pass as they do in
    guc.c."""
    assert value_problem(rule(name), text) is None


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "shared_buffers",
            "999TB",
            "'999TB' is outside the valid range for shared_buffers (16 .. 1073741823 8kB)",
        ),
        ("shared_buffers", "15", "'15' is outside the valid range for shared_buffers"),
        ("checkpoint_timeout", "29s", "'29s' is outside the valid range for checkpoint_timeout"),
        ("vacuum_cost_delay", "1s", "'1s' is outside the valid range for vacuum_cost_delay"),
        ("seq_page_cost", "-1", "'-1' is outside the valid range for seq_page_cost"),
        ("seq_page_cost", "inf", "'inf' is outside the valid range for seq_page_cost"),
        ("work_mem", "4mb", "invalid value '4mb' for work_mem: expected an integer (in kB"),
        ("checkpoint_timeout", "5mins", "invalid value '5mins' for checkpoint_timeout"),
        ("max_connections", "100MB", "invalid value '100MB' for max_connections"),
        ("max_connections", "abc", "invalid value 'abc' for max_connections"),
        ("max_connections", "1e10", "'1e10' is outside the valid range for max_connections"),
        ("jit_above_cost", "1e400", "invalid value '1e400' for jit_above_cost"),
        ("huge_pages", "maybe", "invalid value 'maybe' for huge_pages: expected one of off"),
        ("wal_compression", "yes please", "invalid value 'yes please' for wal_compression"),
        ("ssl", "o", "ssl is a boolean: expected on or off"),
    ],
)
def test_values_the_server_refuses(name: str, text: str, message: str) -> None:
    """Wrong types, units, ranges and enum values are refused, saying why."""
    problem = value_problem(rule(name), text)
    assert problem is not None and problem.startswith(message), problem


def conf_problems(conf: dict[str, Any], table: SettingRules | None) -> dict[str, str]:
    return {
        error["path"]: error["message"]
        for error in check_postgresql_conf(conf, "spec.postgresql_conf", table)
    }


def test_audit_examples_are_refused_with_their_paths() -> None:
    """Every value the audit found failing only at start-up is refused up front, by path."""
    found = conf_problems(
        {
            "shared_buffers": "999TB",
            "shared_bufers": "1GB",
            "port": 2,
            "log_directory": "/etc",
            "ssl": True,
            "max_wal_senders": 0,
            "work_mem": "8MB",
        },
        rules(),
    )
    assert set(found) == {
        f"spec.postgresql_conf.{key}"
        for key in ("shared_buffers", "shared_bufers", "port", "log_directory", "ssl")
    } | {"spec.postgresql_conf.max_wal_senders"}
    assert "did you mean shared_buffers?" in found["spec.postgresql_conf.shared_bufers"]
    assert "managed by the control plane" in found["spec.postgresql_conf.port"]
    assert "relative to the node's data directory" in found["spec.postgresql_conf.log_directory"]
    assert "no server certificate" in found["spec.postgresql_conf.ssl"]
    assert "at least 20" in found["spec.postgresql_conf.max_wal_senders"]


def test_without_server_rules_the_control_plane_rules_still_apply() -> None:
    """Without the server's table, unknown names pass (the server judges them when applied)
    but managed settings, paths, libraries, commands and mesh minimums are still refused."""
    found = conf_problems(
        {
            "shared_bufers": "1GB",
            "shared_buffers": "999TB",
            "archive_command": "cp %p /tmp",
            "session_preload_libraries": "auto_explain",
            "log_directory": "../../etc",
            "max_replication_slots": "4",
            "ssl": "on",
        },
        None,
    )
    assert set(found) == {
        f"spec.postgresql_conf.{key}"
        for key in (
            "archive_command",
            "session_preload_libraries",
            "log_directory",
            "max_replication_slots",
            "ssl",
        )
    }


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("log_directory", "/var/log/pg", "relative to the node's data directory"),
        ("log_directory", "log/../../x", "normalised path inside the data directory"),
        ("log_directory", "pg_wal/logs", "inside the server's own directory pg_wal"),
        ("log_filename", "../x.log", "a file name inside log_directory"),
        ("ssl", "yes", "no server certificate"),
        ("max_worker_processes", 8, "at least 24"),
        ("recovery_target_lsn", "0/1", "restores set their own targets"),
        ("include_dir", "conf.d", "would read another file"),
        ("ssl_key_file", "server.key", "provisions no certificates"),
    ],
)
def test_node_breaking_values_refused(key: str, value: Any, reason: str) -> None:
    """Values that would break the node or reach outside it are refused, saying why."""
    problem = setting_problem(key, value, rules())
    assert problem is not None and reason in problem, problem


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("log_directory", "log"),
        ("log_directory", "logs/postgres"),
        ("ssl", False),
        ("max_wal_senders", 32),
        ("max_worker_processes", "64"),
        ("pglogical.conflict_resolution", "last_update_wins"),
        ("timezone", "UTC"),
        ("random_page_cost", 1.1),
        ("jit", False),
    ],
)
def test_ordinary_values_accepted(key: str, value: Any) -> None:
    """Relative log directories, more replication capacity and extension settings pass."""
    assert setting_problem(key, value, rules()) is None


def test_mesh_minimums_are_what_the_nodes_are_given() -> None:
    """The minimums refused below are the values every node's managed config carries."""
    assert dict(MESH_MINIMUMS) == {
        "max_wal_senders": 20,
        "max_replication_slots": 20,
        "max_worker_processes": 24,
    }


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "on"),
        (False, "off"),
        (200, "200"),
        (1.1, "1.1"),
        (1e-05, "'1e-05'"),
        (1e20, "'1e+20'"),
        ("8MB", "'8MB'"),
        ("it's", "'it''s'"),
        ("a\\b", "'a\\\\b'"),
    ],
)
def test_quote_conf(value: Any, text: str) -> None:
    """Numbers postgresql.conf cannot read bare (an exponent) are quoted like strings."""
    assert quote_conf(value) == text


def api_problems(spec: dict[str, Any], table: SettingRules | None) -> dict[str, str]:
    body = {"spec": {"database_name": "app", "nodes": [{"name": "n1"}], **spec}}
    with pytest.raises(InvalidInputError) as raised:
        parse_database_request(msgspec.json.encode(body), rules=table)
    return {error["path"]: error["message"] for error in raised.value.errors}


def test_parse_database_request_checks_values_with_rules() -> None:
    """Given the server's rules, the request entry point reports a bad value at its path."""
    found = api_problems({"postgresql_conf": {"shared_buffers": "999TB"}}, rules())
    assert list(found) == ["spec.postgresql_conf.shared_buffers"]
    body = {
        "spec": {
            "database_name": "app",
            "nodes": [{"name": "n1"}],
            "postgresql_conf": {"shared_buffers": "999TB"},
        }
    }
    assert parse_database_request(msgspec.json.encode(body)).spec.postgresql_conf


@pytest.mark.parametrize("name", ["template0", "template1", "postgres", "cp_detached"])
def test_reserved_database_names(name: str) -> None:
    """Template, maintenance and control plane database names are refused on database_name."""
    found = api_problems({"database_name": name}, None)
    assert list(found) == ["spec.database_name"]
    assert f"database name {name} is reserved" in found["spec.database_name"]


def test_privileged_ports_refused() -> None:
    """Ports 1-1023 cannot be listened on by the postgres OS user: refused where they are set."""
    found = api_problems({"port": 2, "nodes": [{"name": "n1", "port": 80}]}, None)
    assert list(found) == ["spec.port", "spec.nodes[0].port"]
    assert "port 2 is privileged" in found["spec.port"]
