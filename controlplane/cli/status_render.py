"""Draws a `StatusReport` with rich: one block per database, coloured by health on a terminal
and plain aligned text elsewhere."""

from __future__ import annotations

from datetime import datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from controlplane.cli.output import format_duration, format_size, format_time
from controlplane.cli.status_report import (
    ArchiverStatus,
    DatabaseStatus,
    NodeBackups,
    StatusReport,
)

_STATE_STYLES = {
    "available": "green",
    "replicating": "green",
    "ok": "green",
    "completed": "green",
    "primary": "bold",
    "creating": "cyan",
    "modifying": "cyan",
    "backing_up": "cyan",
    "restoring": "cyan",
    "running": "cyan",
    "pending": "cyan",
    "initializing": "cyan",
    "deleting": "yellow",
    "degraded": "yellow",
    "backlog": "yellow",
    "canceling": "yellow",
    "stopped": "yellow",
    "disabled": "yellow",
    "failed": "bold red",
    "unreachable": "bold red",
    "failing": "bold red",
    "down": "bold red",
    "unknown": "yellow",
}
# A backup older than this is shown as stale (yellow).
_STALE_BACKUP_SECONDS = 36 * 3600


def _state(value: str | None) -> Text:
    if not value:
        return Text("-")
    return Text(value, style=_STATE_STYLES.get(value, ""))


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{format_duration(seconds)} ago"


def _table(*headers: str) -> Table:
    table = Table(
        box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 2, 0, 0)
    )
    for header in headers:
        table.add_column(header, no_wrap=True)
    return table


def _lag(size: int | None, seconds: float | None = None) -> str:
    if size is None:
        return "-"
    text = format_size(size)
    return text if seconds is None else f"{text} / {format_duration(seconds)}"


def _archiving(archiver: ArchiverStatus | None) -> tuple[Text, str, Text, str]:
    """(state, last archived, failures, .ready backlog) cells."""
    if archiver is None:
        return Text("-"), "-", Text("-"), "-"
    failures = Text(str(archiver.failed_count))
    if archiver.state == "failing":
        failures.append(f" (last {archiver.last_failed_wal or '?'})", style="red")
    return (
        _state(archiver.state),
        _ago(archiver.last_archived_age_seconds),
        failures,
        str(archiver.ready_files),
    )


def _instances(database: DatabaseStatus) -> Table:
    table = _table(
        "NODE", "INSTANCE", "HOST", "STATE", "ROLE", "TL", "LAG", "ARCHIVING", "ARCHIVED",
        "FAILURES", "READY",
    )  # fmt: skip
    for i in database.instances:
        table.add_row(
            i.node_name,
            i.id,
            i.host_id,
            _state(i.state),
            _state(i.role),
            str(i.timeline) if i.timeline is not None else "-",
            _lag(i.lag_bytes, i.lag_seconds) if i.role == "replica" else "-",
            *_archiving(i.archiver),
        )
    return table


def _subscriptions(database: DatabaseStatus) -> Table:
    table = _table("SUBSCRIPTION", "NODE", "PROVIDER", "STATUS", "LAG")
    for s in database.subscriptions:
        table.add_row(s.name, s.node_name, s.provider_node, _state(s.status), _lag(s.lag_bytes))
    return table


def _window(backups: NodeBackups) -> str:
    if backups.recovery_window_start is None or backups.recovery_window_end is None:
        return "-"
    return (
        f"{format_time(backups.recovery_window_start)} → {format_time(backups.recovery_window_end)}"
    )


def _backups(database: DatabaseStatus) -> Table:
    table = _table("NODE", "LAST BACKUP", "TYPE", "AGE", "SIZE", "SETS", "RECOVERY WINDOW")
    for b in database.backups:
        if not b.configured:
            table.add_row(b.node_name, Text("no backup_config", style="dim"), *["-"] * 5)
        elif b.error is not None:
            table.add_row(b.node_name, Text(b.error, style="red"), *["-"] * 5)
        elif b.last is None:
            table.add_row(b.node_name, Text("none yet", style="yellow"), "-", "-", "-", "0", "-")
        else:
            stale = b.last.age_seconds > _STALE_BACKUP_SECONDS
            table.add_row(
                b.node_name,
                b.last.label,
                b.last.type,
                Text(_ago(b.last.age_seconds), style="yellow" if stale else ""),
                format_size(b.last.size),
                str(b.sets),
                _window(b),
            )
    return table


def _tasks(database: DatabaseStatus) -> Table:
    table = _table("TASK", "TYPE", "NODE", "STATUS", "STEP", "RUNNING")
    for t in database.tasks:
        step = f"{t.step} ({t.step_number}/{t.steps_total})" if t.step else "-"
        table.add_row(
            t.task_id,
            t.type,
            t.node_name or "-",
            _state(t.status),
            step,
            format_duration(t.running_seconds),
        )
    return table


def render_database(database: DatabaseStatus) -> RenderableType:
    title = Text.assemble(
        (database.id, "bold"), "  ", _state(database.state), f"  database {database.database_name}"
    )
    parts: list[RenderableType] = [title]
    if database.error and database.state == "degraded":
        # The monitor's reasons: instances down, archiving failing, subscriptions down.
        parts.append(Text(f"degraded: {database.error}", style="yellow"))
    elif database.error:
        parts.append(Text(f"error: {database.error}", style="red"))
    parts.append(_instances(database) if database.instances else Text("no instances"))
    if database.subscriptions:
        parts += [Text(""), _subscriptions(database)]
    parts += [Text(""), _backups(database), Text("")]
    parts.append(_tasks(database) if database.tasks else Text("no task running", style="dim"))
    return Group(*parts)


def render_report(report: StatusReport, header: str | None = None) -> RenderableType:
    """The whole screen: an optional header line, then each database."""
    parts: list[RenderableType] = []
    if header is not None:
        parts += [Text(header, style="dim"), Text("")]
    if report.error is not None:
        parts += [Text(f"error: {report.error}", style="bold red"), Text("")]
    elif not report.databases:
        parts.append(Text("no databases"))
    for i, database in enumerate(report.databases):
        if i:
            parts.append(Text(""))
        parts.append(render_database(database))
    return Group(*parts)


def watch_header(interval: float, now: datetime) -> str:
    return f"every {interval:g}s: controlplane status  {format_time(now)}  (Ctrl-C to stop)"
