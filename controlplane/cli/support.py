"""What the API subcommands share: options, error reporting, confirmation, waiting on tasks.

Exit codes: 0 ok, 1 API error or failed task, 2 usage (click's own, and refused confirmations).
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
import msgspec

from controlplane.cli.connection import Connection, Flags, resolve_connection
from controlplane.cli.errors import report_api_error
from controlplane.cli.output import (
    TaskProgress,
    emit,
    format_duration,
    result_summary,
    task_duration,
)
from controlplane.client.errors import ApiError
from controlplane.models import LogEntry, Task

if TYPE_CHECKING:
    from controlplane.client.aio import AsyncClient
    from controlplane.client.sync import Client

P = ParamSpec("P")
FC = TypeVar("FC", bound=Callable[..., Any])

output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Human tables, or JSON for scripts.",
)
wait_option = click.option(
    "--wait", is_flag=True, help="Follow the task's log live; exit 1 unless it completes."
)
yes_option = click.option(
    "-y", "--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal)."
)


def file_option(dest: str, what: str) -> Callable[[FC], FC]:
    """`-f/--file` for a JSON document (`-` reads stdin)."""
    return click.option(
        "-f", "--file", dest, type=click.File("rb"), required=True, help=f"{what} ('-': stdin)."
    )


class TaskFailed(Exception):
    """A waited-for task ended in another state than the one asked for."""

    def __init__(self, task: Task) -> None:
        reason = f": {task.error}" if task.error else ""
        super().__init__(f"task {task.task_id} ({task.type}) {task.status}{reason}")
        self.task = task


def api_command(fn: Callable[P, None]) -> Callable[P, None]:
    """Report API errors and failed tasks on stderr (and as JSON with `-o json`), exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        ctx = click.get_current_context()
        try:
            fn(*args, **kwargs)
        except ApiError as exc:
            report_api_error(exc, ctx.params.get("output", "table"))
            ctx.exit(1)
        except TaskFailed as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)

    return wrapper


def connection_of(ctx: click.Context) -> Connection:
    """The connection the root flags, the environment and the profile describe (resolved once
    per command line)."""
    root = ctx.find_root()
    found = root.meta.get("controlplane.connection")
    if found is None:
        params = root.params
        flags = Flags(**{k: params.get(k) for k in Flags.__dataclass_fields__})
        found = resolve_connection(flags)
        root.meta["controlplane.connection"] = found
    assert isinstance(found, Connection)
    return found


def _without_httpx_command_line() -> None:
    """httpx imports its own command-line tool (rich, pygments, click: ~40 ms) as it loads;
    this process never runs that tool, so it gets a stand-in that says so if ever called."""
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return

    def main(*_: object, **__: object) -> None:
        raise RuntimeError("httpx's command line is not loaded in the controlplane command")

    stand_in = types.ModuleType("httpx._main")
    stand_in.main = main  # type: ignore[attr-defined]
    sys.modules["httpx._main"] = stand_in


def client_of(ctx: click.Context, *, auth: bool = True) -> Client:
    """A blocking client; without a token anywhere, an error naming every place looked at
    (unless the call needs none: `auth=False`)."""
    _without_httpx_command_line()
    from controlplane.client.sync import Client

    connection = connection_of(ctx)
    token = connection.require_token() if auth else connection.token
    return Client(connection.url, token, verify=connection.verify())


def async_client_of(connection: Connection) -> AsyncClient:
    _without_httpx_command_line()
    from controlplane.client.aio import AsyncClient

    return AsyncClient(connection.url, connection.require_token(), verify=connection.verify())


def read_json(stream: Any, what: str) -> Any:
    try:
        return msgspec.json.decode(stream.read())
    except msgspec.DecodeError as exc:
        raise click.BadParameter(f"{what} is not valid JSON: {exc}", param_hint="--file") from None


def confirm(yes: bool, question: str) -> None:
    """Ask on a terminal; without one, refuse (usage error) unless `--yes` was given."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(f"{question} Refusing without --yes: no terminal to confirm on.")
    click.confirm(question, abort=True)


def _follow_labels(main: Task, children: Sequence[Task]) -> dict[str, Task]:
    return {"": main} | {(c.node_name or c.task_id): c for c in children}


def run_tasks(
    ctx: click.Context, output: str, wait: bool, main: Task, children: Sequence[Task] = ()
) -> tuple[Task, list[Task]]:
    """The tasks as started, or with `--wait` as they finished (showing progress meanwhile)."""
    if not wait:
        return main, list(children)
    labels = _follow_labels(main, children)
    stream = sys.stderr if output == "json" else sys.stdout
    progress = TaskProgress(stream, live=stream.isatty())
    for label, started in labels.items():
        progress.track(label, started)
    import asyncio

    try:
        finals = asyncio.run(_follow_all(connection_of(ctx), main.database_id, labels, progress))
    except KeyboardInterrupt:
        progress.close()
        click.echo(
            f"\nstopped waiting; task {main.task_id} goes on. Follow it with:\n"
            f"  controlplane task log {main.database_id} {main.task_id} --follow",
            err=True,
        )
        ctx.exit(130)
    progress.close()
    return finals[""], [finals[label] for label in labels if label]


async def _follow_all(
    connection: Connection, database_id: str, labels: dict[str, Task], progress: TaskProgress
) -> dict[str, Task]:
    import asyncio
    import contextlib

    async with async_client_of(connection) as client:

        async def follow(label: str, task: Task) -> Task:
            async for item in client.follow_task_log(database_id, task.task_id):
                if isinstance(item, LogEntry):
                    progress.entry(label, item)
            final = await client.get_task(database_id, task.task_id)
            progress.finished(label, final.status)
            return final

        ticker = asyncio.create_task(_tick(progress))
        try:
            finals = await asyncio.gather(*(follow(k, t) for k, t in labels.items()))
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    return dict(zip(labels, finals, strict=True))


async def _tick(progress: TaskProgress) -> None:
    import asyncio

    while True:
        await asyncio.sleep(1)
        progress.tick()


def describe(task: Task, wait: bool) -> str:
    """What a person needs after an operation: how to follow it, or how it ended."""
    if not wait:
        return (
            f"task {task.task_id} ({task.type}) {task.status}\n"
            f"follow it: controlplane task log {task.database_id} {task.task_id} --follow"
        )
    took = format_duration(task_duration(task))
    line = f"task {task.task_id} ({task.type}) {task.status} in {took}"
    summary = result_summary(task) if task.status == "completed" else None
    return line + (f"\n{summary}" if summary else "")


def conclude(answer: Any, main: Task, output: str, wait: bool, human: Callable[[], str]) -> None:
    """Print the answer; a waited-for task that did not complete makes the command fail."""
    emit(
        answer,
        output,
        lambda: "\n\n".join(filter(None, (describe(main, wait), human()))),
        sys.stdout,
    )
    if wait and main.status != "completed":
        raise TaskFailed(main)
