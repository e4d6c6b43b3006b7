"""What one frame of `controlplane status` asks the API, all at once: the database views,
each node's backup catalog and the tasks in flight; and the watch loop that redraws frames."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from controlplane.cli.connection import Connection
from controlplane.cli.output import to_json
from controlplane.cli.status_report import (
    StatusReport,
    backups_configured,
    database_status,
    node_names,
)
from controlplane.cli.support import async_client_of
from controlplane.client.errors import ApiError, ApiNotFound
from controlplane.models import ACTIVE_STATUSES, BackupCatalog, Database, Task

if TYPE_CHECKING:
    from controlplane.client.aio import AsyncClient

_PIPE_WIDTH = 400


async def _catalog(client: AsyncClient, database_id: str, node: str) -> BackupCatalog | str:
    try:
        return await client.list_backups(database_id, node)
    except ApiError as exc:
        return exc.message


async def _active_tasks(client: AsyncClient, database_id: str) -> list[Task]:
    pages = await asyncio.gather(
        *(client.list_tasks(database_id, status=s, limit=100) for s in sorted(ACTIVE_STATUSES))
    )
    return [task for page in pages for task in page]


async def _one(client: AsyncClient, database: Database) -> tuple[Database, dict[str, Any], Any]:
    nodes = [n for n in node_names(database) if backups_configured(database, n)]
    catalogs, tasks = await asyncio.gather(
        asyncio.gather(*(_catalog(client, database.id, n) for n in nodes)),
        _active_tasks(client, database.id),
    )
    return database, dict(zip(nodes, catalogs, strict=True)), tasks


async def gather_report(client: AsyncClient, database_id: str | None) -> StatusReport:
    """Ask the API for everything one frame shows."""
    if database_id is None:
        found = await client.list_databases()
    else:
        found = [await client.get_database(database_id)]
    answers = await asyncio.gather(*(_one(client, d) for d in found))
    now = datetime.now(UTC)
    return StatusReport(
        observed_at=now,
        databases=[database_status(d, catalogs, tasks, now) for d, catalogs, tasks in answers],
    )


def print_report(report: StatusReport, output: str, header: str | None, clear: bool) -> None:
    if output == "json":
        # One document per line while watching, so a script can read frame by frame.
        text = to_json(report) if header is None else to_json(report).replace("\n", "")
        click.echo(text)
        return
    from rich.console import Console

    from controlplane.cli.status_render import render_report

    console = Console(highlight=False)
    if not console.is_terminal:
        # A pipe has no width: lay the tables out whole rather than at 80 columns.
        console = Console(highlight=False, width=_PIPE_WIDTH)
    with console.capture() as captured:
        console.print(render_report(report, header))
    if clear and console.is_terminal:
        sys.stdout.write("\x1b[H\x1b[2J\x1b[3J")
    sys.stdout.write("\n".join(line.rstrip() for line in captured.get().split("\n")))
    sys.stdout.flush()


async def watch(
    connection: Connection, database_id: str | None, output: str, interval: float
) -> None:
    """Draw a frame every `interval` seconds until Ctrl-C, which ends it at once, mid-fetch
    included; an unknown database ends it, an unreachable server only shows in the frame.

    Ctrl-C is this loop's own signal handler, not a cancellation of `asyncio.run`'s task: a
    cancellation landing inside the HTTP client could be lost, and the frames went on."""
    from controlplane.cli.status_render import watch_header

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = True
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here: asyncio.run's
        handled = False
    try:
        async with async_client_of(connection) as client:
            while not stop.is_set():
                fetch = asyncio.ensure_future(gather_report(client, database_id))
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if stop.is_set():
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ApiError):
                        await fetch
                    break
                try:
                    report = fetch.result()
                except ApiNotFound:
                    raise
                except ApiError as exc:
                    report = StatusReport(observed_at=datetime.now(UTC), error=exc.message)
                print_report(report, output, watch_header(interval, report.observed_at), clear=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)


async def once(connection: Connection, database_id: str | None) -> StatusReport:
    async with async_client_of(connection) as client:
        return await gather_report(client, database_id)
