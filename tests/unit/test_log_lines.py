"""Server log formats and task log levels: JSON lines with the task they come from, pgBackRest's
levels mapped to the task log's."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import pytest

from controlplane.api.log_lines import FORMAT, JsonFormatter, OneLineFormatter
from controlplane.pgbackrest.command import console_level
from controlplane.tasks.log_context import bind_task, task_fields
from controlplane.tasks.logger import TaskLogger


def _record(text: str, **fields: Any) -> logging.LogRecord:
    record = logging.LogRecord("controlplane.x", logging.WARNING, __file__, 1, text, (), None)
    if fields:
        record.fields = fields
    return record


def test_json_line_names_the_task_it_comes_from() -> None:
    """A record logged inside a task's context carries its task, database and node; a newline
    in the message stays inside the one JSON line."""

    async def inside_task() -> str:
        bind_task("t-1", "storefront", "n2")
        return JsonFormatter().format(_record("a\nFORGED line", path="/v1/x"))

    line = asyncio.run(inside_task())
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "a\nFORGED line"
    assert (parsed["level"], parsed["logger"], parsed["path"]) == (
        "warning",
        "controlplane.x",
        "/v1/x",
    )
    assert (parsed["task_id"], parsed["database_id"], parsed["node"]) == ("t-1", "storefront", "n2")
    assert parsed["timestamp"].endswith("+00:00")
    assert task_fields() == {}  # the task's context did not leak out


def test_record_fields_never_replace_the_base_keys() -> None:
    """A field named like a base key (message, level) is dropped, not written over it."""
    parsed = json.loads(JsonFormatter().format(_record("real", message="fake", level="x")))
    assert (parsed["message"], parsed["level"]) == ("real", "warning")


def test_text_line_escapes_and_appends_the_task() -> None:
    """The text format keeps one record on one line and appends the task's id and node."""
    line = OneLineFormatter(FORMAT).format(_record("a\nb", task_id="t-9", node="n1"))
    assert "\n" not in line and line.endswith("a\\nb [task_id=t-9 node=n1]")


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("2026-12-01 05:44:35.010 P00   WARN: unable to open log file", "warning"),
        ("P00  ERROR: [056]: unable to find primary cluster", "error"),
        ("ERROR: [038]: unable to open missing file", "error"),
        ("WARN: option 'repo1-retention-full' is not set", "warning"),
        ("2026-12-01 05:44:35.010 P00   INFO: restore command begin 2.45", "info"),
        ("P01 DETAIL: backup file /x", "info"),
        ("      NOTE: process will continue without log file.", None),
        ("server started", None),
    ],
)
def test_pgbackrest_console_levels(line: str, level: str | None) -> None:
    """pgBackRest's WARN and ERROR lines are warnings and errors; its other levels info."""
    assert console_level(line) == level


class _Entries:
    """Stands in for the task_log table: what append_entries would insert."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.rows += rows


def test_task_log_entries_carry_node_level_and_reach_the_server_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pgBackRest output is stored at the level it states (an indented line continues it),
    every entry names the task's node, secrets are redacted, and the entry reaches the server
    log with the task's id."""
    table = _Entries()
    task_id = uuid.uuid4()
    writer = TaskLogger(
        table,  # type: ignore[arg-type]
        task_id,
        next_id=1,
        secrets={"hunter2-secret"},
        database_id="storefront",
        node="n1",
    )
    sink = writer.sink("pgbackrest")

    async def run() -> None:
        await sink("P00   WARN: unable to open log file hunter2-secret")
        await sink("      NOTE: process will continue without log file.")
        await sink("P00   INFO: backup command end: completed successfully")
        await writer.info("step backup started", step="backup", node="n2")

    with caplog.at_level(logging.INFO, logger="controlplane.task"):
        asyncio.run(run())
    stored = [(level, message, fields) for _, _, level, message, fields in table.rows]
    assert [level for level, _, _ in stored] == ["warning", "warning", "info", "info"]
    assert "hunter2-secret" not in stored[0][1]
    assert [fields["node"] for _, _, fields in stored] == ["n1", "n1", "n1", "n2"]
    shipped = [(r.levelname, r.getMessage(), r.fields["task_id"]) for r in caplog.records]
    assert shipped[0] == ("WARNING", "P00   WARN: unable to open log file ********", str(task_id))
    assert ("INFO", "step backup started", str(task_id)) in shipped
    # Routine command output stays at debug in the server log (it is in the task log).
    assert not any("backup command end" in message for _, message, _ in shipped)
