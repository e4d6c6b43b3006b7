"""The `controlplane` command: serve, migrate, local tokens, status, and the API client
subcommands."""

from __future__ import annotations

from typing import Any

import click

from controlplane.cli.changes import OPERATION_COMMANDS
from controlplane.cli.errors import JsonErrorGroup
from controlplane.cli.local import LOCAL_COMMANDS, server_modules, settings_of
from controlplane.cli.queries import INSPECTION_COMMANDS
from controlplane.cli.status import status


@click.group(cls=JsonErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    envvar="CONTROLPLANE_DATA_DIR",
    help="Data directory (store, instances, admin token) [default: ./.controlplane].",
)
@click.option(
    "--profile",
    help="Profile of the config file to use [env CONTROLPLANE_PROFILE; default: default].",
)
@click.option("--url", help="API URL [env CONTROLPLANE_URL; default: http://127.0.0.1:3000].")
@click.option(
    "--token",
    help="API token. Prefer CONTROLPLANE_TOKEN or --token-file: other users can read argv.",
)
@click.option("--token-file", help="File holding the API token.")
@click.option("--cacert", help="CA certificate(s) to verify the server with (PEM).")
@click.option("--cert", help="Client certificate for mutual TLS (PEM).")
@click.option("--key", help="Private key of --cert, unless the certificate file holds it.")
def main(**_: Any) -> None:
    """PostgreSQL control plane: run it (serve), and drive it over its API.

    The client commands find the API's URL, token and TLS files in the flags, then the
    environment (CONTROLPLANE_URL, CONTROLPLANE_TOKEN), then a profile of
    $XDG_CONFIG_HOME/controlplane/config.toml, then the local data dir's admin token.
    """


for _command in (*OPERATION_COMMANDS, *INSPECTION_COMMANDS, *LOCAL_COMMANDS, status):
    main.add_command(_command)


@main.command()
@click.option("--host", default=None, help="API bind address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="API port (default 3000).")
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="CONTROLPLANE_LOG_FORMAT",
    help="Server log lines: text, or one JSON object per line.",
)
@click.pass_context
def serve(
    ctx: click.Context, host: str | None, port: int | None, log_level: str, log_format: str
) -> None:
    """Run the API, task worker, scheduler and monitor in one process."""
    with server_modules():
        import uvicorn

        from controlplane.api.access_log import AccessLog
        from controlplane.api.app import create_app
        from controlplane.api.log_lines import configure_logging

    settings = settings_of(ctx, host=host, port=port)
    # One formatter for every record (ours, uvicorn's, Litestar's): what a client sends cannot
    # start a log line. uvicorn must not install its own handlers (log_config=None).
    configure_logging(log_level, "json" if log_format == "json" else "text")
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
        AccessLog(create_app(settings)),
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        log_config=None,
        access_log=False,
        lifespan="on",
        **ssl,
    )
