"""Commands that work on this machine's state store directly, not over the API: `migrate` and
`token create|list|revoke`.

These commands, and `serve`, need the server's dependencies (`controlplane[server]`); the
package alone is the API client and its commands. Without them they fail with the CLI's error
`server_not_installed`, naming the missing module, instead of a traceback.

A token command never creates a state store by accident (a mistyped `--data-dir` would
otherwise start an empty one and print a token no server knows): it refuses unless the store
exists, or `token create --init` says to make one.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from controlplane.cli.errors import CliError
from controlplane.cli.output import emit, table
from controlplane.cli.support import output_option
from controlplane.settings import Settings, load_settings

if TYPE_CHECKING:
    from controlplane.store.pool import Pool

T = TypeVar("T")
SCOPES = ("read", "write", "admin")  # as controlplane.store.tokens.SCOPES (asyncpg-free here)
SERVER_HINT = "pip install 'controlplane[server]'"


@contextlib.contextmanager
def server_modules() -> Iterator[None]:
    """Around the imports of the server's modules: a third-party module missing from this
    install (the client alone) becomes the CLI error `server_not_installed`."""
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not missing or missing.partition(".")[0] == "controlplane":
            raise  # our own package incomplete: a bug, not a missing extra
        raise CliError(
            f"this command needs the server's dependencies (no module named {missing!r}):"
            f" {SERVER_HINT}",
            name="server_not_installed",
            details={"missing_module": missing, "hint": SERVER_HINT},
        ) from None


def settings_of(ctx: click.Context, **overrides: Any) -> Settings:
    """Settings from the environment and the root `--data-dir`, then `overrides`."""
    root = ctx.find_root().params
    merged = {"data_dir": Path(root["data_dir"]) if root.get("data_dir") else None, **overrides}
    try:
        return load_settings(overrides=merged)
    except ValueError as exc:
        message = f"invalid configuration: {exc}"
        raise CliError(message, name="invalid_configuration", exit_code=2) from None


@contextlib.asynccontextmanager
async def local_store(settings: Settings, *, init: bool) -> AsyncIterator[Pool]:
    """A migrated pool on the configured store, starting (then stopping) the embedded one if
    needed; a store that does not exist yet is made only when `init`."""
    with server_modules():
        from controlplane.store.embedded import EmbeddedStore
        from controlplane.store.migrate import migrate
        from controlplane.store.pool import create_pool

    embedded = None
    dsn = settings.database_url
    if dsn is None:
        cluster = settings.data_path / "store"
        if not init and not (cluster / "PG_VERSION").exists():
            raise CliError(
                f"no state store in {cluster}: is the data dir right (--data-dir or"
                " CONTROLPLANE_DATA_DIR)? Pass --init to create a new store there",
                name="store_not_found",
            )
        embedded = EmbeddedStore(settings)
        dsn = await embedded.start()
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        if not init and await pool.fetchval("SELECT to_regclass('schema_migrations')") is None:
            raise CliError(
                "the state store at CONTROLPLANE_DATABASE_URL holds no control plane tables;"
                " pass --init to create them",
                name="store_not_found",
            )
        await migrate(pool)
        yield pool
    finally:
        await pool.close()
        if embedded is not None and embedded.started_here:
            await embedded.stop()
            from controlplane.server.runtime import tidy_run_dir  # the server's modules: only here

            tidy_run_dir(settings)


def run_local(coro: Coroutine[Any, Any, T]) -> T:
    """Run a store coroutine; a domain error becomes a CLI error (JSON with `-o json`)."""
    import asyncio

    from controlplane.errors import ControlPlaneError

    try:
        return asyncio.run(coro)
    except ControlPlaneError as exc:
        raise CliError(exc.message, name=exc.name, details=exc.details) from None


init_option = click.option(
    "--init", is_flag=True, help="Create the state store (and its tables) if there is none yet."
)


@click.command(name="migrate")
@output_option
@click.pass_context
def migrate_command(ctx: click.Context, output: str) -> None:
    """Create the state store if needed and apply pending migrations."""

    async def go() -> None:
        async with local_store(settings_of(ctx), init=True):
            pass

    run_local(go())
    emit({"migrated": True}, output, lambda: "migrations applied", sys.stdout)


@click.group()
def token() -> None:
    """Manage API tokens (local: talks to the state store directly)."""


@token.command(name="create")
@click.argument("name")
@click.option("--scope", type=click.Choice(SCOPES), default="read", show_default=True)
@init_option
@output_option
@click.pass_context
def token_create(ctx: click.Context, name: str, scope: str, init: bool, output: str) -> None:
    """Create a token and print it (shown once)."""
    with server_modules():
        from controlplane.store import tokens

    async def go() -> str:
        async with local_store(settings_of(ctx), init=init) as pool:
            return await tokens.create_token(pool, name, scope)

    secret = run_local(go())
    answer = {"name": name, "scope": scope, "token": secret}
    emit(answer, output, lambda: secret, sys.stdout)


@token.command(name="list")
@output_option
@click.pass_context
def token_list(ctx: click.Context, output: str) -> None:
    """List token names and scopes (never the tokens)."""
    with server_modules():
        from controlplane.store import tokens

    async def go() -> list[tokens.TokenInfo]:
        async with local_store(settings_of(ctx), init=False) as pool:
            return await tokens.list_tokens(pool)

    found = [
        {"name": i.name, "scope": i.scope, "created_at": i.created_at} for i in run_local(go())
    ]
    rows = [(t["name"], t["scope"], t["created_at"]) for t in found]
    emit(found, output, lambda: table(("NAME", "SCOPE", "CREATED"), rows), sys.stdout)


@token.command(name="revoke")
@click.argument("name")
@output_option
@click.pass_context
def token_revoke(ctx: click.Context, name: str, output: str) -> None:
    """Revoke a token by name."""
    with server_modules():
        from controlplane.store import tokens

    async def go() -> None:
        async with local_store(settings_of(ctx), init=False) as pool:
            await tokens.revoke_token(pool, name)

    run_local(go())
    emit(
        {"name": name, "revoked": True},
        output,
        lambda: f"token {name} revoked",
        sys.stdout,
    )


LOCAL_COMMANDS: tuple[click.Command, ...] = (migrate_command, token)
