"""The `controlplane` command: serve, migrate, local tokens, and the API client subcommands."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

from controlplane.cli.changes import OPERATION_COMMANDS
from controlplane.cli.queries import INSPECTION_COMMANDS
from controlplane.errors import ControlPlaneError
from controlplane.settings import Settings, load_settings
from controlplane.store import tokens
from controlplane.store.embedded import EmbeddedStore
from controlplane.store.migrate import migrate
from controlplane.store.pool import Pool, create_pool


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    root = ctx.find_root().params
    merged = {"data_dir": Path(root["data_dir"]) if root.get("data_dir") else None, **overrides}
    try:
        return load_settings(overrides=merged)
    except Exception as exc:  # msgspec.ValidationError, ValueError from env parsing
        raise click.UsageError(f"invalid configuration: {exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    envvar="CONTROLPLANE_DATA_DIR",
    help="Data directory (store, instances, admin token) [default: ./.controlplane].",
)
@click.option(
    "--url",
    envvar="CONTROLPLANE_URL",
    help="API URL for the client commands [default: http://127.0.0.1:3000].",
)
@click.option(
    "--token",
    envvar="CONTROLPLANE_TOKEN",
    help="API token for the client commands [default: <data dir>/admin-token].",
)
def main(data_dir: str | None, url: str | None, token: str | None) -> None:
    """PostgreSQL control plane: run it (serve), and drive it over its API."""


for _command in (*OPERATION_COMMANDS, *INSPECTION_COMMANDS):
    main.add_command(_command)


@main.command()
@click.option("--host", default=None, help="API bind address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="API port (default 3000).")
@click.option("--log-level", default="info", show_default=True)
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, log_level: str) -> None:
    """Run the API, task worker, scheduler and monitor in one process."""
    import uvicorn

    from controlplane.api.app import create_app
    from controlplane.api.log_lines import configure_logging

    settings = _settings(ctx, host=host, port=port)
    # One formatter for every record (ours, uvicorn's, Litestar's): what a client sends cannot
    # start a log line. uvicorn must not install its own handlers (log_config=None).
    configure_logging(log_level)
    ssl: dict[str, Any] = {}
    if settings.tls_cert and settings.tls_key:
        ssl = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
        if settings.tls_client_ca:
            import ssl as ssl_module

            ssl |= {
                "ssl_ca_certs": settings.tls_client_ca,
                "ssl_cert_reqs": ssl_module.CERT_REQUIRED,
            }
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        log_config=None,
        access_log=False,
        lifespan="on",
        **ssl,
    )


@contextlib.asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[Pool]:
    """A pool on the configured store, starting (and then stopping) the embedded one if needed."""
    embedded = None
    dsn = settings.database_url
    if dsn is None:
        embedded = EmbeddedStore(settings)
        dsn = await embedded.start()
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        yield pool
    finally:
        await pool.close()
        if embedded is not None and embedded.started_here:
            await embedded.stop()
            from controlplane.server.runtime import tidy_run_dir  # the server's modules: only here

            tidy_run_dir(settings)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ControlPlaneError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)


@main.command(name="migrate")
@click.pass_context
def migrate_command(ctx: click.Context) -> None:
    """Apply pending state-store migrations."""

    async def go() -> None:
        async with _store(_settings(ctx)):
            pass

    _run(go())
    click.echo("migrations applied")


@main.group()
def token() -> None:
    """Manage API tokens (local: talks to the state store directly)."""


@token.command(name="create")
@click.argument("name")
@click.option("--scope", type=click.Choice(tokens.SCOPES), default="read", show_default=True)
@click.pass_context
def token_create(ctx: click.Context, name: str, scope: str) -> None:
    """Create a token and print it (shown once)."""

    async def go() -> str:
        async with _store(_settings(ctx)) as pool:
            return await tokens.create_token(pool, name, scope)

    click.echo(_run(go()))


@token.command(name="list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """List token names and scopes."""

    async def go() -> list[tokens.TokenInfo]:
        async with _store(_settings(ctx)) as pool:
            return await tokens.list_tokens(pool)

    for info in _run(go()):
        click.echo(f"{info.name}\t{info.scope}\t{info.created_at.isoformat()}")


@token.command(name="revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Revoke a token by name."""

    async def go() -> None:
        async with _store(_settings(ctx)) as pool:
            await tokens.revoke_token(pool, name)

    _run(go())
    click.echo(f"token {name} revoked")
