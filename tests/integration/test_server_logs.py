"""The server log an operator ships: `serve --log-format json` writes one JSON object per line,
an access line per request with no secret in it, and task activity with its task id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import create_and_wait, database_body, full_log
from tests.support.data import backup, posix
from tests.support.server import ServerProcess, serving

QUERY_SECRET = "query-secret-value-81c2"
WRONG_TOKEN = "wrong-token-value-5d0e"


@pytest.fixture
def json_server(scratch_dir: Path, store_url: str) -> Iterator[ServerProcess]:
    with serving(scratch_dir / "cp", database_url=store_url, args=["--log-format", "json"]) as proc:
        yield proc


def _lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line of the server's output, each parsed as one JSON object."""
    parsed = []
    for number, line in enumerate(server.log_text().splitlines(), 1):
        record = json.loads(line)  # raises, naming the line, when one is not JSON
        assert isinstance(record, dict), (number, line)
        assert {"timestamp", "level", "logger", "message"} <= record.keys(), (number, line)
        parsed.append(record)
    return parsed


async def test_json_log_has_access_and_task_lines_without_secrets(
    json_server: ServerProcess, scratch_dir: Path
) -> None:
    """A create and a backup later, every output line is JSON; access lines name method, path,
    status, duration and remote but no token or query value; the backup's task lines carry its
    task id, database and node, and its task log entries name their node."""
    async with json_server.client() as api:
        body = database_body("shipped", backup_config=posix(scratch_dir / "repo"))
        await create_and_wait(api, body)
        task = await backup(api, "shipped", "n1")
        answer = await api.get("/v1/databases", params={"token": QUERY_SECRET})
        assert answer.status_code == 200
        headers = {"Authorization": f"Bearer {WRONG_TOKEN}"}
        async with httpx.AsyncClient(base_url=json_server.url, headers=headers) as stranger:
            assert (await stranger.get("/v1/databases")).status_code == 401
        entries = await full_log(api, "shipped", task["task_id"])
    assert entries and all(e["fields"].get("node") == "n1" for e in entries), entries[:3]

    records = _lines(json_server)
    text = json_server.log_text()
    for secret in (json_server.token, WRONG_TOKEN, QUERY_SECRET, "s3cret-pass"):
        assert secret not in text
    access = [r for r in records if r["logger"] == "controlplane.access"]
    assert access and all(
        {"method", "path", "status", "duration_ms", "remote"} <= r.keys() for r in access
    )
    assert {(r["method"], r["path"], r["status"]) for r in access} >= {
        ("GET", "/v1/databases", 200),
        ("GET", "/v1/databases", 401),
        ("POST", "/v1/databases/shipped/nodes/n1/backups", 202),
    }
    mine = [r for r in records if r.get("task_id") == task["task_id"]]
    assert any(r["message"].startswith("step ") for r in mine), mine[:5]
    assert all(r["database_id"] == "shipped" and r["node"] == "n1" for r in mine)
    assert {r["level"] for r in records} <= {"debug", "info", "warning", "error", "critical"}
