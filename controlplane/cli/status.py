"""`controlplane status [DATABASE] [--watch]`: one screen per database, from the API.

Every call of one frame is sent at once (database views, each node's backup catalog, the tasks
in flight); `--watch` draws a new frame every `--interval` seconds until Ctrl-C, and keeps
watching through a server that stops answering (the frame says so).
"""

from __future__ import annotations

import click

from controlplane.cli.errors import report_api_error
from controlplane.cli.support import connection_of, output_option
from controlplane.client.errors import ApiError


@click.command(name="status")
@click.argument("database_id", required=False)
@click.option("-w", "--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option(
    "-n",
    "--interval",
    type=click.FloatRange(0.2),
    default=2.0,
    show_default=True,
    help="Seconds between frames with --watch.",
)
@output_option
@click.pass_context
def status(
    ctx: click.Context, database_id: str | None, watch: bool, interval: float, output: str
) -> None:
    """Instances (state, role, lag, archiving), subscriptions, last backups, recovery windows
    and running tasks of one database, or of all."""
    import asyncio

    from controlplane.cli.status_fetch import once, print_report
    from controlplane.cli.status_fetch import watch as watch_frames

    connection = connection_of(ctx)
    try:
        if watch:
            asyncio.run(watch_frames(connection, database_id, output, interval))
        else:
            print_report(asyncio.run(once(connection, database_id)), output, None, clear=False)
    except KeyboardInterrupt:
        ctx.exit(0)
    except ApiError as exc:
        report_api_error(exc, output)
        ctx.exit(1)
