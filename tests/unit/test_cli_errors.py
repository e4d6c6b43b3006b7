"""Every CLI error is a sentence on stderr and, with `-o json`, the one JSON error shape on
stdout: usage errors too; settings errors name the variable a person sets."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from controlplane.cli.commands import main
from controlplane.cli.errors import wants_json
from controlplane.settings import load_settings


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["database", "get", "-o", "json"], "invalid_argument"),
        (["database", "list", "--bogus", "-o", "json"], "usage_error"),
        (["task", "list", "--status", "nope", "--output=json"], "invalid_argument"),
        (
            ["--url", "http://127.0.0.1:9", "--token", "t", "task", "get", "d", "ab", "-ojson"],
            "invalid_task_id",
        ),
    ],
)
def test_usage_errors_are_json_with_o_json(args: list[str], name: str) -> None:
    """A usage error exits 2 with the JSON error object on stdout and click's usage text on
    stderr."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["name"] == name
    assert error["status"] == 0
    assert error["message"]
    assert "Error" in result.stderr or "error:" in result.stderr


def test_usage_errors_without_json_print_no_json() -> None:
    result = CliRunner().invoke(main, ["database", "get"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Missing argument 'DATABASE_ID'" in result.stderr


def test_missing_token_is_a_json_error(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """No token anywhere: exit 1, `missing_token` with every place looked at in details."""
    monkeypatch.delenv("CONTROLPLANE_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("CONTROLPLANE_DATA_DIR", f"{tmp_path}/none")
    result = CliRunner().invoke(
        main, ["--url", "http://127.0.0.1:9", "database", "list", "-o", "json"]
    )
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["name"] == "missing_token"
    assert "CONTROLPLANE_TOKEN (unset)" in error["details"]["searched"]
    assert "error: no api token found; looked in:" in result.stderr


def test_version_needs_no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """`version` asks an unauthenticated route: no token is not an error there (the server
    being unreachable is)."""
    monkeypatch.delenv("CONTROLPLANE_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("CONTROLPLANE_DATA_DIR", f"{tmp_path}/none")
    result = CliRunner().invoke(main, ["--url", "http://127.0.0.1:9", "version", "-o", "json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["name"] == "unreachable"


def test_wants_json_reads_raw_arguments() -> None:
    assert wants_json(["x", "-o", "json"])
    assert wants_json(["--output=json"])
    assert wants_json(["-ojson"])
    assert not wants_json(["-o", "table"])
    assert not wants_json(["--", "-o", "json"])


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CONTROLPLANE_PORT": "abc"}, "CONTROLPLANE_PORT: expected `int`, got `str`"),
        ({"CONTROLPLANE_ALLOW_RESTORE": "maybe"}, "CONTROLPLANE_ALLOW_RESTORE: expected a boolean"),
        ({"CONTROLPLANE_ORCHESTRATOR": "k8s"}, "CONTROLPLANE_ORCHESTRATOR: invalid enum value"),
        (
            {"CONTROLPLANE_MAX_BODY_BYTES": "5"},
            "CONTROLPLANE_MAX_BODY_BYTES: expected `int` >= 1024",
        ),
    ],
)
def test_settings_errors_name_the_variable(env: dict[str, str], expected: str) -> None:
    """A bad environment value is reported by its variable's name, not a JSON path."""
    with pytest.raises(ValueError) as raised:
        load_settings(env)
    assert str(raised.value).startswith(expected)
    assert "$." not in str(raised.value)


def test_a_bad_setting_is_a_usage_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONTROLPLANE_PORT", "abc")
    result = CliRunner().invoke(main, ["token", "list", "-o", "json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["name"] == "invalid_configuration"
    assert "CONTROLPLANE_PORT" in error["message"]
