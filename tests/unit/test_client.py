"""The API client without a server: error mapping, SSE parsing and resuming, CLI output."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from click.testing import CliRunner

from controlplane.cli.changes import build_restore_request
from controlplane.cli.commands import main
from controlplane.cli.output import (
    TaskProgress,
    entry_text,
    format_clock,
    format_duration,
    format_size,
    result_summary,
    table,
    to_json,
)
from controlplane.client import (
    ApiBadRequest,
    ApiConflict,
    ApiError,
    ApiForbidden,
    ApiInvalidInput,
    ApiNotFound,
    ApiServerError,
    ApiUnauthorized,
    ApiUnreachable,
    AsyncClient,
    Client,
    LogEnd,
    SseEvent,
    SseParser,
    error_from_response,
    resolve_token,
    resolve_url,
)
from controlplane.models import LogEntry, Task, TaskStep

NOW = datetime(2025, 5, 5, 9, 38, 52, tzinfo=UTC)


def _error(name: str, message: str, **details: Any) -> bytes:
    return json.dumps({"name": name, "message": message, "details": details}).encode()


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ApiBadRequest),
        (401, ApiUnauthorized),
        (403, ApiForbidden),
        (404, ApiNotFound),
        (409, ApiConflict),
        (422, ApiInvalidInput),
        (500, ApiServerError),
        (502, ApiServerError),
        (418, ApiError),
    ],
)
def test_error_class_follows_status(status: int, cls: type[ApiError]) -> None:
    """Each HTTP error status maps to its exception class, keeping name, message and details."""
    exc = error_from_response(status, _error("some_name", "it broke", key="value"))
    assert type(exc) is cls
    assert (exc.status, exc.name, exc.message, exc.details) == (
        status,
        "some_name",
        "it broke",
        {"key": "value"},
    )
    assert str(exc) == "it broke"


def test_conflict_and_invalid_input_expose_their_details() -> None:
    """A 409 names the blocking task; a 422 lists every problem with its path."""
    busy = error_from_response(409, _error("operation_in_progress", "busy", task_id="t-1"))
    assert isinstance(busy, ApiConflict)
    assert busy.task_id == "t-1"
    problems = [{"path": "spec.nodes[0].name", "message": "bad"}, {"path": "id", "message": "x"}]
    invalid = error_from_response(422, _error("invalid_input", "bad", errors=problems))
    assert isinstance(invalid, ApiInvalidInput)
    assert invalid.errors == problems


def test_error_body_not_in_api_shape_is_kept_as_text() -> None:
    """A proxy's HTML error page still becomes a typed error with the text as message."""
    exc = error_from_response(502, b"<html>Bad Gateway</html>")
    assert isinstance(exc, ApiServerError)
    assert exc.name == "http_502"
    assert exc.message == "<html>Bad Gateway</html>"


def _client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> Client:
    return Client("http://cp.test/", "tok", transport=httpx.MockTransport(handler), **kwargs)


def test_client_sends_token_path_and_body_and_decodes_models() -> None:
    """Requests carry the bearer token and JSON body; answers decode into the models."""
    seen: list[httpx.Request] = []
    task = _task()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"task": json.loads(to_json(task))})

    with _client(handler) as client:
        started = client.start_backup("db1", "n1", type="incr", annotations={"why": "test"})
    assert started == task
    request = seen[0]
    assert request.method == "POST"
    assert request.url == "http://cp.test/v1/databases/db1/nodes/n1/backups"
    assert request.headers["authorization"] == "Bearer tok"
    assert json.loads(request.content) == {"type": "incr", "annotations": {"why": "test"}}


def test_verify_sends_no_body_and_a_drill_names_its_set() -> None:
    """A plain verify posts no body (the server's verify); a drill posts drill and its set."""
    seen: list[httpx.Request] = []
    task = _task()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"task": json.loads(to_json(task))})

    with _client(handler) as client:
        client.verify_backups("db1", "n1")
        client.verify_backups("db1", "n1", drill=True)
        client.verify_backups("db1", "n1", drill=True, set_label="20261201-064912F")
    assert [r.url.path for r in seen] == ["/v1/databases/db1/nodes/n1/backups/verify"] * 3
    assert seen[0].content == b""
    assert json.loads(seen[1].content) == {"drill": True}
    assert json.loads(seen[2].content) == {"drill": True, "set": "20261201-064912F"}


def test_client_raises_typed_errors_and_passes_filters() -> None:
    """A 404 answer raises ApiNotFound; unset task filters are not sent."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, content=_error("not_found", "database nope not found"))

    with _client(handler) as client, pytest.raises(ApiNotFound) as caught:
        client.list_tasks("nope", status="failed", limit=5)
    assert caught.value.message == "database nope not found"
    assert dict(seen[0].url.params) == {"status": "failed", "limit": "5"}


def test_unreachable_server_is_an_api_error() -> None:
    """A refused connection raises ApiUnreachable naming the URL."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _client(handler) as client, pytest.raises(ApiUnreachable) as caught:
        client.version()
    assert "http://cp.test" in caught.value.message
    assert caught.value.name == "unreachable"


def test_sse_parser_follows_the_event_stream_rules() -> None:
    """Multi-line data joins with newlines, comments and incomplete events are ignored, the id
    persists, and a blank line dispatches."""
    parser = SseParser()
    lines = [
        ": keep-alive",
        "id: 7",
        "event: entry",
        "data: {",
        'data:  "a": 1}',
        "",
        "event: nothing",
        "",
        "data",
        "",
        "retry: 100",
        "id: 8\0",
    ]
    events = [e for line in lines if (e := parser.feed(line)) is not None]
    assert events == [
        SseEvent(event="entry", data='{\n "a": 1}', id="7"),
        SseEvent(event="message", data="", id="7"),
    ]
    assert parser.last_event_id == "7"


def _entry(entry_id: int) -> LogEntry:
    return LogEntry(entry_id=entry_id, timestamp=NOW, level="info", message=f"line {entry_id}")


def _sse(entry_ids: list[int], end: str | None = None) -> list[bytes]:
    chunks = [
        b"id: %d\r\nevent: entry\r\ndata: %s\r\n\r\n" % (i, msgspec.json.encode(_entry(i)))
        for i in entry_ids
    ]
    if end is not None:
        data = json.dumps({"task_status": end, "last_entry_id": entry_ids[-1]})
        chunks.append(f"event: end\r\ndata: {data}\r\n\r\n".encode())
    return chunks


class _BrokenStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Sends its chunks, then fails like a dropped connection (unless told it ends)."""

    def __init__(self, chunks: list[bytes], *, breaks: bool) -> None:
        self.chunks = chunks
        self.breaks = breaks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.breaks:
            raise httpx.ReadError("connection reset")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.breaks:
            raise httpx.ReadError("connection reset")


def _resuming_handler(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    """First stream: entries 1-2 then a reset; second: 2 again (a duplicate), 3 and the end."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"content-type": "text/event-stream"}
        if len(seen) == 1:
            return httpx.Response(
                200, headers=headers, stream=_BrokenStream(_sse([1, 2]), breaks=True)
            )
        return httpx.Response(
            200, headers=headers, stream=_BrokenStream(_sse([2, 3], end="failed"), breaks=False)
        )

    return handler


def test_follow_resumes_after_a_dropped_stream_without_repeating() -> None:
    """A reset stream reconnects with Last-Event-ID; every entry arrives exactly once."""
    seen: list[httpx.Request] = []
    with _client(_resuming_handler(seen), reconnect_delay=0) as client:
        items = list(client.follow_task_log("db1", "t1"))
    assert [i.entry_id for i in items if isinstance(i, LogEntry)] == [1, 2, 3]
    assert items[-1] == LogEnd(task_status="failed", last_entry_id=3)
    assert seen[0].headers["accept"] == "text/event-stream"
    assert "last-event-id" not in seen[0].headers
    assert seen[1].headers["last-event-id"] == "2"
    assert seen[1].url.params["after_entry_id"] == "2"


async def test_async_follow_resumes_after_a_dropped_stream() -> None:
    """The async client resumes the same way."""
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(_resuming_handler(seen))
    async with AsyncClient(
        "http://cp.test", "tok", transport=transport, reconnect_delay=0
    ) as client:
        items = [i async for i in client.follow_task_log("db1", "t1")]
    assert [i.entry_id for i in items if isinstance(i, LogEntry)] == [1, 2, 3]
    assert isinstance(items[-1], LogEnd)
    assert seen[1].headers["last-event-id"] == "2"


def test_follow_gives_up_after_bounded_reconnects() -> None:
    """A stream that keeps dropping without progress ends in ApiUnreachable, not a loop."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, stream=_BrokenStream([], breaks=True))

    with (
        _client(handler, reconnect_delay=0, max_reconnects=3) as client,
        pytest.raises(ApiUnreachable),
    ):
        list(client.follow_task_log("db1", "t1"))
    assert len(calls) == 4


def test_url_and_token_resolution(tmp_path: Path) -> None:
    """Arguments win over the environment, which wins over the data dir's admin token."""
    (tmp_path / "admin-token").write_text("from-file\n")
    env = {"CONTROLPLANE_DATA_DIR": str(tmp_path)}
    assert resolve_token(env=env) == "from-file"
    assert resolve_token(env=env | {"CONTROLPLANE_TOKEN": "from-env"}) == "from-env"
    assert resolve_token("explicit", env=env | {"CONTROLPLANE_TOKEN": "from-env"}) == "explicit"
    assert resolve_token(env={"CONTROLPLANE_DATA_DIR": str(tmp_path / "none")}) is None
    assert resolve_url(env={}) == "http://127.0.0.1:3000"
    assert resolve_url(env={"CONTROLPLANE_URL": "https://cp:8443/"}) == "https://cp:8443"
    assert resolve_url("http://x:1", env={"CONTROLPLANE_URL": "https://cp"}) == "http://x:1"


def test_table_and_units() -> None:
    """Tables align columns and show missing values as '-'; sizes and durations read well."""
    assert table(("A", "LONGER"), [("x", None), ("yyyy", 3)]).splitlines() == [
        "A     LONGER",
        "x     -",
        "yyyy  3",
    ]
    assert [format_size(s) for s in (None, 512, 1536, 3 * 1024**3)] == [
        "-",
        "512 B",
        "1.5 KiB",
        "3.0 GiB",
    ]
    assert [format_duration(s) for s in (None, 4.25, 185, 7260)] == ["-", "4.2s", "3m05s", "2h01m"]
    assert format_clock(3725) == "1:02:05"


def test_log_lines_name_their_source_without_pgbackrest_timestamps() -> None:
    """pgBackRest lines lose their own timestamp; warnings are marked."""
    line = LogEntry(
        entry_id=1,
        timestamp=NOW,
        level="info",
        message="2025-05-05 09:38:52.123 P00   INFO: backup command begin 2.45",
        fields={"source": "pgbackrest"},
    )
    assert entry_text(line) == "pgbackrest: P00   INFO: backup command begin 2.45"
    warning = LogEntry(entry_id=2, timestamp=NOW, level="warning", message="task failed: x")
    assert entry_text(warning) == "WARNING: task failed: x"


def _task(**changes: Any) -> Task:
    values: dict[str, Any] = {
        "task_id": "t1",
        "parent_id": None,
        "scope": "database",
        "entity_id": "db1",
        "database_id": "db1",
        "node_name": "n1",
        "type": "node_backup",
        "status": "running",
        "trigger": "manual",
        "actor": "admin",
        "created_at": NOW,
        "steps": [
            TaskStep(name="resolve_node", status="completed"),
            TaskStep(name="take_backup", status="pending"),
        ],
    }
    return Task(**(values | changes))


def test_progress_prints_each_line_with_elapsed_time_and_tracks_the_step() -> None:
    """Off a terminal, progress is plain lines with elapsed time; the status names the step."""
    out = io.StringIO()
    now = [100.0]
    progress = TaskProgress(out, live=False, clock=lambda: now[0])
    progress.track("", _task())
    now[0] = 163.0
    started = LogEntry(
        entry_id=1,
        timestamp=NOW,
        level="info",
        message="step take_backup started",
        fields={"step": "take_backup"},
    )
    progress.entry("", started)
    progress.entry("n2", _entry(2))
    assert out.getvalue().splitlines() == ["01:03  step take_backup started", "01:03  [n2] line 2"]
    assert progress.status_line() == "01:03  take_backup 2/2"


def test_progress_on_a_terminal_keeps_a_status_line_under_the_log() -> None:
    """Live progress erases its status line before each log line and redraws it after."""
    out = io.StringIO()
    progress = TaskProgress(out, live=True, clock=lambda: 0.0)
    progress.track("", _task(status="pending"))
    progress.tick()
    progress.entry("", _entry(1))
    progress.close()
    status, erase = "00:00  pending", "\r\x1b[2K"
    assert out.getvalue() == f"{erase}{status}{erase}00:00  line 1\n{erase}{status}{erase}"


def test_result_summaries() -> None:
    """A finished backup, verify or expire says what it produced in one line."""
    backup = _task(
        status="completed",
        result={"label": "20250505-093852F", "type": "full", "size": 2048, "stopped_at": "t"},
    )
    assert result_summary(backup) == "backup 20250505-093852F (full) of 2.0 KiB, stopped at t"
    verify = _task(type="verify", result={"status": "ok", "sets": [{}, {}]})
    assert result_summary(verify) == "verify status ok: 2 set(s) checked"
    assert result_summary(_task(type="expire", result={"expired": ["a", "b"]})) == "expired a, b"


def test_restore_flags_shape_the_restore_options() -> None:
    """--time sets a time target, --set alone restores a set to its end (type immediate)."""
    raw = {"source_database_id": "db1", "restore_options": {"type": "time", "target": "x"}}
    config, nodes, pre = build_restore_request(raw, ("n2",), None, "20250505-093852F", False)
    assert config["restore_options"] == {"type": "immediate", "set": "20250505-093852F"}
    assert (nodes, pre) == (["n2"], False)
    request = {"restore_config": {"source_database_id": "db1"}, "target_nodes": ["n1"]}
    config, nodes, pre = build_restore_request(request, (), "2025-05-05 09:38:52+00", "L", True)
    assert config["restore_options"] == {
        "type": "time",
        "target": "2025-05-05 09:38:52+00",
        "set": "L",
    }
    assert (nodes, pre) == (["n1"], True)


def test_destructive_commands_refuse_without_a_terminal(tmp_path: Path) -> None:
    """Without --yes and without a terminal, restore/delete/expire stop with a usage error
    before any request (the URL points nowhere, so a request would exit 1)."""
    config = tmp_path / "restore.json"
    config.write_text('{"source_database_id": "db1"}')
    runner = CliRunner()
    base = ["--url", "http://127.0.0.1:9", "--token", "t"]
    for args in (
        ["restore", "db1", "-f", str(config)],
        ["database", "delete", "db1"],
        ["backup", "expire", "db1", "n1", "20250505-093852F"],
    ):
        result = runner.invoke(main, [*base, *args])
        assert result.exit_code == 2, result.output
        assert "Refusing without --yes" in result.output


def test_api_errors_exit_1_with_json_on_stdout() -> None:
    """An API failure exits 1; with -o json the error is machine-readable on stdout."""
    result = CliRunner().invoke(
        main, ["--url", "http://127.0.0.1:9", "--token", "t", "database", "list", "-o", "json"]
    )
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["name"] == "unreachable"
    assert "http://127.0.0.1:9" in error["message"]
