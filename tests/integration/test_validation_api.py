"""Bad specs through the HTTP API: 422 invalid_input naming every field path, nothing created."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.api import database_body

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def apply(body: dict[str, Any]) -> None:
        target: Any = body
        parts = path.split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last = parts[-1]
        if last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return apply


POSIX = {"type": "posix", "base_path": "/var/backups"}

CASES: list[tuple[str, Mutation, list[str]]] = [
    ("bad id", _set("id", "Bad_Id"), ["id"]),
    ("id with double dash", _set("id", "a--b"), ["id"]),
    ("bad node name", _set("spec.nodes", [{"name": "node1"}]), ["spec.nodes[0].name"]),
    (
        "duplicate nodes",
        _set("spec.nodes", [{"name": "n1"}, {"name": "n1"}]),
        ["spec.nodes[1].name"],
    ),
    (
        "unknown field",
        _set("spec.nodes", [{"name": "n1", "colour": "red"}]),
        ["spec.nodes[0].colour"],
    ),
    ("missing database_name", lambda b: b["spec"].pop("database_name"), ["spec.database_name"]),
    ("wrong type", _set("spec.port", "5432"), ["spec.port"]),
    (
        "bad cron",
        _set(
            "spec.backup_config",
            {
                "repositories": [POSIX],
                "schedules": [{"id": "nightly", "type": "full", "cron_expression": "61 * * * *"}],
            },
        ),
        ["spec.backup_config.schedules[0].cron_expression"],
    ),
    (
        "relative base_path",
        _set("spec.backup_config", {"repositories": [{"type": "posix", "base_path": "backups"}]}),
        ["spec.backup_config.repositories[0].base_path"],
    ),
    (
        "dotdot base_path",
        _set("spec.backup_config", {"repositories": [{"type": "posix", "base_path": "/a/../etc"}]}),
        ["spec.backup_config.repositories[0].base_path"],
    ),
    (
        "newline injection",
        _set(
            "spec.backup_config",
            {
                "repositories": [
                    {"type": "s3", "s3_bucket": "bucket", "s3_region": "us-east-1\nrepo1-path=/x"}
                ]
            },
        ),
        ["spec.backup_config.repositories[0].s3_region"],
    ),
    (
        "custom option key pattern",
        _set(
            "spec.backup_config", {"repositories": [{**POSIX, "custom_options": {"Bad=Key": "1"}}]}
        ),
        ["spec.backup_config.repositories[0].custom_options.Bad=Key"],
    ),
    (
        "custom option sets a path",
        _set(
            "spec.backup_config",
            {"repositories": [{**POSIX, "custom_options": {"repo-path": "/tmp/x"}}]},
        ),
        ["spec.backup_config.repositories[0].custom_options.repo-path"],
    ),
    (
        "custom option sets cipher pass",
        _set(
            "spec.backup_config",
            {"repositories": [{**POSIX, "custom_options": {"repo-cipher-pass": "x"}}]},
        ),
        ["spec.backup_config.repositories[0].custom_options.repo-cipher-pass"],
    ),
    (
        "custom option sets pg path",
        _set(
            "spec.backup_config",
            {"repositories": [{**POSIX, "custom_options": {"pg1-path": "/x"}}]},
        ),
        ["spec.backup_config.repositories[0].custom_options.pg1-path"],
    ),
    (
        "unknown repository type",
        _set("spec.backup_config", {"repositories": [{"type": "ftp"}]}),
        ["spec.backup_config.repositories[0].type"],
    ),
    (
        "oversized secret",
        _set("spec.database_users.0.password", "x" * 5000),
        ["spec.database_users[0].password"],
    ),
    (
        "managed setting",
        _set("spec.postgresql_conf", {"archive_command": "rm -rf /"}),
        ["spec.postgresql_conf.archive_command"],
    ),
    (
        "reserved user",
        _set("spec.database_users.0.username", "postgres"),
        ["spec.database_users[0].username"],
    ),
    (
        "value out of the server's range",
        _set("spec.postgresql_conf", {"shared_buffers": "999TB"}),
        ["spec.postgresql_conf.shared_buffers"],
    ),
    (
        "unknown setting",
        _set("spec.postgresql_conf", {"shared_bufers": "1GB"}),
        ["spec.postgresql_conf.shared_bufers"],
    ),
    (
        "wrong enum value",
        _set("spec.postgresql_conf", {"huge_pages": "maybe"}),
        ["spec.postgresql_conf.huge_pages"],
    ),
    (
        "managed port setting",
        _set("spec.postgresql_conf", {"port": 2}),
        ["spec.postgresql_conf.port"],
    ),
    ("privileged port", _set("spec.port", 2), ["spec.port"]),
    (
        "log directory outside the data directory",
        _set("spec.postgresql_conf", {"log_directory": "/etc"}),
        ["spec.postgresql_conf.log_directory"],
    ),
    (
        "ssl without certificates",
        _set("spec.postgresql_conf", {"ssl": "on"}),
        ["spec.postgresql_conf.ssl"],
    ),
    (
        "fewer wal senders than the mesh needs",
        _set("spec.postgresql_conf", {"max_wal_senders": 0}),
        ["spec.postgresql_conf.max_wal_senders"],
    ),
    (
        "preload library",
        _set("spec.postgresql_conf", {"shared_preload_libraries": "pglogical,auto_explain"}),
        ["spec.postgresql_conf.shared_preload_libraries"],
    ),
    ("reserved database name", _set("spec.database_name", "template1"), ["spec.database_name"]),
    (
        "custom option with a repository number",
        _set(
            "spec.backup_config",
            {"repositories": [{**POSIX, "custom_options": {"repo1-path": "/tmp/x"}}]},
        ),
        ["spec.backup_config.repositories[0].custom_options.repo1-path"],
    ),
    (
        "time target without timezone",
        _set(
            "spec.restore_config",
            {
                "source_database_id": "src",
                "source_node_name": "n1",
                "repository": POSIX,
                "restore_options": {"type": "time", "target": "2026-01-01 10:00:00"},
            },
        ),
        ["spec.restore_config.restore_options.target"],
    ),
]


@pytest.mark.parametrize(
    ("mutation", "paths"), [(m, p) for _, m, p in CASES], ids=[c[0] for c in CASES]
)
async def test_rule_reports_its_path(
    api: httpx.AsyncClient, mutation: Mutation, paths: list[str]
) -> None:
    """Each validation rule answers 422 invalid_input with the offending field's path."""
    body = copy.deepcopy(database_body("valid"))
    mutation(body)
    response = await api.post("/v1/databases", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["name"] == "invalid_input"
    reported = [e["path"] for e in error["details"]["errors"]]
    for path in paths:
        assert path in reported, reported
    assert (await api.get("/v1/databases")).json()["databases"] == []
    assert (await api.get("/v1/tasks")).json()["tasks"] == []


async def test_all_errors_reported_at_once(api: httpx.AsyncClient) -> None:
    """Several independent mistakes come back together in one response."""
    body = database_body("many")
    body["spec"]["nodes"] = [{"name": "x1"}, {"name": "n2", "port": 70000}]
    body["spec"]["database_users"][0]["attributes"] = ["FLY"]
    body["spec"]["extra"] = True
    response = await api.post("/v1/databases", json=body)
    assert response.status_code == 422
    reported = {e["path"] for e in response.json()["details"]["errors"]}
    assert {"spec.nodes[0].name", "spec.nodes[1].port", "spec.extra"} <= reported
