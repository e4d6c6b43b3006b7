"""Subcommands that inspect: tasks (list, get, log, follow, cancel), schedules, hosts, version."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, get_args

import click
import msgspec

from controlplane import __version__
from controlplane.cli.output import (
    emit,
    hosts_table,
    log_line,
    schedules_table,
    task_detail,
    tasks_table,
)
from controlplane.cli.support import (
    TaskFailed,
    api_command,
    client_of,
    describe,
    output_option,
    run_tasks,
    wait_option,
)
from controlplane.cli.task_ids import resolve_task_id
from controlplane.models import LogEntry, TaskLog, TaskStatus, TaskType

if TYPE_CHECKING:
    from controlplane.client.sync import Client

_TASK_TYPES = get_args(TaskType)
_TASK_STATUSES = get_args(TaskStatus)


@click.group()
def task() -> None:
    """List, inspect, follow and cancel tasks."""


@task.command(name="list")
@click.argument("database_id", required=False)
@click.option("--status", type=click.Choice(_TASK_STATUSES), help="Only tasks in this status.")
@click.option(
    "--type", "task_type", type=click.Choice(_TASK_TYPES), help="Only tasks of this type."
)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--after", "after_task_id", help="Page on: only tasks older than this task id.")
@output_option
@click.pass_context
@api_command
def task_list(
    ctx: click.Context,
    database_id: str | None,
    status: str | None,
    task_type: str | None,
    limit: int,
    after_task_id: str | None,
    output: str,
) -> None:
    """List tasks, newest first (of one database, or of all)."""
    with client_of(ctx) as client:
        found = client.list_tasks(
            database_id, status=status, type=task_type, limit=limit, after_task_id=after_task_id
        )
    emit(found, output, lambda: tasks_table(found), sys.stdout)


@task.command(name="get")
@click.argument("database_id")
@click.argument("task_id")
@output_option
@click.pass_context
@api_command
def task_get(ctx: click.Context, database_id: str, task_id: str, output: str) -> None:
    """Show a task with its steps."""
    with client_of(ctx) as client:
        found = client.get_task(database_id, resolve_task_id(client, database_id, task_id))
    emit(found, output, lambda: task_detail(found), sys.stdout)


@task.command(name="log")
@click.argument("database_id")
@click.argument("task_id")
@click.option("-f", "--follow", is_flag=True, help="Print entries live until the task ends.")
@click.option("--after", "after_entry_id", type=click.IntRange(0), default=0, help="Cursor.")
@click.option("--limit", type=click.IntRange(1, 1000), help="Print one page of this size.")
@output_option
@click.pass_context
@api_command
def task_log(
    ctx: click.Context,
    database_id: str,
    task_id: str,
    follow: bool,
    after_entry_id: int,
    limit: int | None,
    output: str,
) -> None:
    """Print a task's log; with --follow, one JSON entry per line in json output.

    Following exits 1 unless the task completes.
    """
    with client_of(ctx) as client:
        task_id = resolve_task_id(client, database_id, task_id)
        if follow:
            _follow_log(client, database_id, task_id, after_entry_id, output)
            return
        log = _read_log(client, database_id, task_id, after_entry_id, limit)
    emit(log, output, lambda: "\n".join(log_line(e) for e in log.entries), sys.stdout)


def _read_log(
    client: Client, database_id: str, task_id: str, after: int, limit: int | None
) -> TaskLog:
    if limit is not None:
        return client.get_task_log(database_id, task_id, after_entry_id=after, limit=limit)
    page = client.get_task_log(database_id, task_id, after_entry_id=after, limit=1000)
    entries = list(page.entries)
    while len(page.entries) == 1000:
        page = client.get_task_log(
            database_id, task_id, after_entry_id=page.last_entry_id, limit=1000
        )
        entries += page.entries
    last = entries[-1].entry_id if entries else after
    return TaskLog(
        task_id=page.task_id, task_status=page.task_status, last_entry_id=last, entries=entries
    )


def _follow_log(client: Client, database_id: str, task_id: str, after: int, output: str) -> None:
    status = "completed"
    for item in client.follow_task_log(database_id, task_id, after_entry_id=after):
        if isinstance(item, LogEntry):
            line = msgspec.json.encode(item).decode() if output == "json" else log_line(item)
            click.echo(line)
        else:
            status = item.task_status
    if status != "completed":
        raise TaskFailed(client.get_task(database_id, task_id))


@task.command(name="cancel")
@click.argument("database_id")
@click.argument("task_id")
@wait_option
@output_option
@click.pass_context
@api_command
def task_cancel(
    ctx: click.Context, database_id: str, task_id: str, wait: bool, output: str
) -> None:
    """Cancel a task; with --wait, exit 1 unless it ends canceled."""
    with client_of(ctx) as client:
        found = client.cancel_task(database_id, resolve_task_id(client, database_id, task_id))
    found, _ = run_tasks(ctx, output, wait, found)
    emit(found, output, lambda: describe(found, wait), sys.stdout)
    if wait and found.status != "canceled":
        raise TaskFailed(found)


@click.group()
def schedule() -> None:
    """Backup schedules."""


@schedule.command(name="list")
@click.argument("database_id")
@output_option
@click.pass_context
@api_command
def schedule_list(ctx: click.Context, database_id: str, output: str) -> None:
    """List a database's backup schedules with their next run and last task."""
    with client_of(ctx) as client:
        found = client.list_schedules(database_id)
    emit(found, output, lambda: schedules_table(found), sys.stdout)


@click.group()
def host() -> None:
    """Hosts instances run on."""


@host.command(name="list")
@output_option
@click.pass_context
@api_command
def host_list(ctx: click.Context, output: str) -> None:
    """List hosts."""
    with client_of(ctx) as client:
        found = client.list_hosts()
    emit(found, output, lambda: hosts_table(found), sys.stdout)


@click.command(name="version")
@output_option
@click.pass_context
@api_command
def version(ctx: click.Context, output: str) -> None:
    """Print the client's and the server's versions."""
    with client_of(ctx, auth=False) as client:
        found = client.version()
    text = f"client {__version__}, server {found.version} (api {found.api_version})"
    emit(found, output, lambda: text, sys.stdout)


INSPECTION_COMMANDS: tuple[click.Command, ...] = (task, schedule, host, version)
