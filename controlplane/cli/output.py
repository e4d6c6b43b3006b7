"""Human output of the CLI: tables, times and sizes, task summaries and live task progress."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from controlplane.models import (
    BackupCatalog,
    Database,
    Host,
    LogEntry,
    RestorePoint,
    Schedule,
    Task,
)

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_PGBACKREST_STAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:.]{8,12} (?=P[0-9]{2} )")


def to_json(value: object) -> str:
    """Indented JSON of a model (or plain value): what `--output json` prints."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def format_time(value: datetime | None) -> str:
    """A timestamp in UTC to the second, `-` when unset."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_duration(seconds: float | None) -> str:
    """`4.2s`, `3m05s`, `2h07m`; `-` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_clock(seconds: float) -> str:
    """Elapsed time as `mm:ss` (or `h:mm:ss`) for progress lines."""
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes:02d}:{secs:02d}"
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def format_size(size: int | None) -> str:
    """Bytes in binary units: `512 B`, `1.5 MiB`; `-` when unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        return format_time(value)
    return str(value).replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; None and empty cells show as `-`."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [list(headers), *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _shorten(text: str | None, width: int = 60) -> str | None:
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"


def task_duration(task: Task, now: datetime | None = None) -> float | None:
    """Seconds the task ran (so far, while it runs); None before it started."""
    if task.started_at is None:
        return None
    end = task.completed_at or now or datetime.now(UTC)
    return max(0.0, (end - task.started_at).total_seconds())


def databases_table(databases: Sequence[Database]) -> str:
    rows = [
        (
            d.id,
            d.state,
            ",".join(i.node_name for i in d.instances),
            d.spec.get("database_name"),
            d.created_at,
            _shorten(d.error, 40),
        )
        for d in databases
    ]
    return table(("ID", "STATE", "NODES", "DATABASE", "CREATED", "ERROR"), rows)


def database_detail(database: Database) -> str:
    head = table(
        ("FIELD", "VALUE"),
        [
            ("id", database.id),
            ("state", database.state),
            ("database", database.spec.get("database_name")),
            ("created", database.created_at),
            ("updated", database.updated_at),
            ("error", database.error),
        ],
    )
    instances = table(
        ("NODE", "STATE", "ROLE", "HOST", "CONNECT", "ERROR"),
        [
            (
                i.node_name,
                i.state,
                i.role,
                i.host_id,
                f"{i.connection_info.host}:{i.connection_info.port}/{i.connection_info.database}",
                _shorten(i.error, 40),
            )
            for i in database.instances
        ],
    )
    return f"{head}\n\n{instances}"


def tasks_table(tasks: Sequence[Task]) -> str:
    rows = [
        (
            t.task_id,
            t.database_id,
            t.node_name,
            t.type,
            t.status,
            t.trigger,
            t.created_at,
            format_duration(task_duration(t)),
            _shorten(t.error, 50),
        )
        for t in tasks
    ]
    headers = ("TASK", "DATABASE", "NODE", "TYPE", "STATUS", "TRIGGER", "CREATED", "TOOK", "ERROR")
    return table(headers, rows)


def task_detail(task: Task) -> str:
    head = table(
        ("FIELD", "VALUE"),
        [
            ("task", task.task_id),
            ("database", task.database_id),
            ("node", task.node_name),
            ("type", task.type),
            ("status", task.status),
            ("trigger", task.trigger),
            ("actor", task.actor),
            ("parent", task.parent_id),
            ("created", task.created_at),
            ("started", task.started_at),
            ("completed", task.completed_at),
            ("took", format_duration(task_duration(task))),
            ("error", task.error),
        ],
    )
    steps = table(
        ("STEP", "STATUS", "STARTED", "COMPLETED"),
        [(s.name, s.status, s.started_at, s.completed_at) for s in task.steps],
    )
    summary = result_summary(task)
    return f"{head}\n\n{steps}" + (f"\n\nresult: {summary}" if summary else "")


def result_summary(task: Task) -> str | None:
    """One line saying what a finished task produced (its `result`), or None."""
    result = task.result
    if not result:
        return None
    if task.type == "node_backup" and "label" in result:
        own = result.get("delta")
        size = format_size(own if own is not None else result.get("size"))
        return (
            f"backup {result['label']} ({result.get('type')}) of {size}"
            f", stopped at {result.get('stopped_at')}"
        )
    if task.type == "verify" and "sets" in result:
        return f"verify status {result.get('status')}: {len(result['sets'])} set(s) checked"
    if task.type == "expire" and "expired" in result:
        return f"expired {', '.join(result['expired']) or 'nothing'}"
    return _shorten(json.dumps(result, sort_keys=True), 200)


def backups_table(catalog: BackupCatalog) -> str:
    rows = [
        (
            b.label,
            b.type,
            b.repository_id,
            b.started_at,
            b.stopped_at,
            format_duration((b.stopped_at - b.started_at).total_seconds()),
            format_size(b.size),
            format_size(b.delta if b.delta is not None else b.size),
            format_size(
                b.repository_delta if b.repository_delta is not None else b.repository_size
            ),
            b.task_id,
        )
        for b in catalog.backups
    ]
    # DATABASE is the whole database the set restores; BACKUP and STORED are what this set
    # itself copied and keeps (an incr or diff set's increment, not its whole chain).
    headers = ("LABEL", "TYPE", "REPO", "STARTED", "STOPPED", "TOOK", "DATABASE", "BACKUP")
    text = table((*headers, "STORED", "TASK"), rows)
    window = catalog.recovery_window
    if window is None:
        text += "\n\nrecovery window: none (no backup yet)"
    else:
        text += (
            f"\n\nrecovery window: {format_time(window.earliest)} → {format_time(window.latest)}"
        )
    if catalog.restore_points:
        text += "\n\n" + restore_points_table(catalog.restore_points)
    return text


def restore_points_table(points: Sequence[RestorePoint]) -> str:
    return table(
        ("RESTORE POINT", "LSN", "TIMELINE", "TIME", "CREATED BY"),
        [(p.name, p.lsn, p.timeline, p.time, p.created_by) for p in points],
    )


def schedules_table(schedules: Sequence[Schedule]) -> str:
    rows = [
        (
            s.schedule_id,
            s.node_name,
            s.type,
            s.cron_expression,
            s.next_run_at,
            s.last_task.task_id if s.last_task else None,
            s.last_task.status if s.last_task else None,
        )
        for s in schedules
    ]
    headers = ("SCHEDULE", "NODE", "TYPE", "CRON", "NEXT RUN", "LAST TASK", "LAST STATUS")
    return table(headers, rows)


def hosts_table(hosts: Sequence[Host]) -> str:
    return table(
        ("HOST", "ORCHESTRATOR", "STATE", "INSTANCES"),
        [(h.id, h.orchestrator, h.state, h.instances) for h in hosts],
    )


def entry_text(entry: LogEntry, *, mark_level: bool = True) -> str:
    """A log entry's message, tagged with the command that printed it (`pgbackrest: …`) and,
    unless it is info, with its level.

    pgBackRest's own timestamp is dropped: every line already has one.
    """
    source = entry.fields.get("source")
    marker = "" if entry.level == "info" or not mark_level else f"{entry.level.upper()}: "
    if not source:
        return f"{marker}{entry.message}"
    message = _PGBACKREST_STAMP.sub("", entry.message) if source == "pgbackrest" else entry.message
    return f"{marker}{source}: {message}"


def log_line(entry: LogEntry) -> str:
    """A `task log` line: timestamp, level, message."""
    return (
        f"{format_time(entry.timestamp)}  {entry.level:<7}  {entry_text(entry, mark_level=False)}"
    )


class TaskProgress:
    """Live view of followed tasks: every log line once, then the current step and elapsed time.

    On a terminal a status line (`03:12 take_backup 3/4`) stays under the log and is redrawn
    every second; elsewhere only the log lines are printed, each with its elapsed time.
    """

    def __init__(
        self, out: TextIO, *, live: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._out = out
        self._live = live
        self._clock = clock
        self._start = clock()
        self._steps: dict[str, list[str]] = {}
        self._current: dict[str, str] = {}
        self._shown = False

    def track(self, label: str, task: Task) -> None:
        """Follow `task` under `label` (a node name, or `""` for the main task)."""
        self._steps[label] = [s.name for s in task.steps]
        running = [s.name for s in task.steps if s.status == "running"]
        self._current[label] = running[0] if running else task.status

    def entry(self, label: str, entry: LogEntry) -> None:
        """Print one log entry and note the step it starts."""
        step = entry.fields.get("step")
        if isinstance(step, str) and entry.message.startswith(f"step {step} started"):
            self._current[label] = step
        prefix = f"[{label}] " if label else ""
        self._write(f"{format_clock(self._clock() - self._start)}  {prefix}{entry_text(entry)}")

    def finished(self, label: str, status: str) -> None:
        self._current[label] = status
        self._redraw()

    def status_line(self) -> str:
        """`mm:ss` then each task's current step as `name i/n`."""
        parts = []
        for label, current in self._current.items():
            steps = self._steps.get(label, [])
            where = (
                f"{current} {steps.index(current) + 1}/{len(steps)}"
                if current in steps
                else current
            )
            parts.append(f"{label}: {where}" if label else where)
        return f"{format_clock(self._clock() - self._start)}  " + " | ".join(parts)

    def tick(self) -> None:
        """Redraw the status line (called every second while waiting)."""
        self._redraw()

    def close(self) -> None:
        if self._shown:
            self._out.write("\r\x1b[2K")
            self._out.flush()
            self._shown = False

    def _write(self, line: str) -> None:
        if self._live and self._shown:
            self._out.write("\r\x1b[2K")
        self._out.write(line + "\n")
        self._shown = False
        self._redraw()

    def _redraw(self) -> None:
        if not self._live:
            self._out.flush()
            return
        self._out.write("\r\x1b[2K" + self.status_line())
        self._out.flush()
        self._shown = True


def emit(value: Any, output: str, human: Callable[[], str], out: TextIO) -> None:
    """Print `value` as JSON or its human rendering, per `--output`."""
    out.write((to_json(value) if output == "json" else human()) + "\n")
    out.flush()
