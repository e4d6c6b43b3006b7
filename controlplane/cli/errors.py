"""How the CLI reports failures: one JSON error shape for `-o json` (API errors, its own errors
and usage errors alike) and a sentence on stderr for people.

The JSON shape is the API's error body under `error`, with the HTTP `status` (0 when no
answer came from the server): `{"error": {"name", "message", "details", "status"}}`, on stdout.
Exit codes: 1 for errors, 2 for usage errors (click's own, refused confirmations, bad ids).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click
import msgspec

from controlplane.client.errors import ApiConflict, ApiError, ApiInvalidInput


class CliError(click.ClickException):
    """A failure found by the CLI itself (no token, a bad profile, an ambiguous task id)."""

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return self.code

    def __init__(
        self,
        message: str,
        *,
        name: str,
        exit_code: int = 1,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.name = name
        self.code = exit_code
        self.details: dict[str, Any] = dict(details or {})

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def error_json(name: str, message: str, details: Mapping[str, Any], status: int = 0) -> str:
    """The `-o json` rendering of any error."""
    error = {"name": name, "message": message, "details": dict(details), "status": status}
    return msgspec.json.format(msgspec.json.encode({"error": error}), indent=2).decode()


def report_api_error(exc: ApiError, output: str) -> None:
    """An API error on stderr (each problem of a 422 on its own line), and as JSON on stdout."""
    if output == "json":
        click.echo(error_json(exc.name, exc.message, exc.details, exc.status))
    if isinstance(exc, ApiInvalidInput) and exc.errors:
        click.echo(f"error: invalid input ({len(exc.errors)} problem(s))", err=True)
        for problem in exc.errors:
            click.echo(f"  {problem.get('path')}: {problem.get('message')}", err=True)
        return
    click.echo(f"error: {exc.message}", err=True)
    if isinstance(exc, ApiConflict) and exc.task_id:
        click.echo(f"  blocking task: {exc.task_id}", err=True)


def wants_json(argv: Sequence[str]) -> bool:
    """Whether the command line asks for JSON output, read from the raw arguments (a usage
    error stops click before it has parsed them)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return False
        if arg in ("-o", "--output") and i + 1 < len(argv) and argv[i + 1] == "json":
            return True
        if arg in ("-ojson", "--output=json"):
            return True
    return False


def _usage_name(exc: click.ClickException) -> str:
    if isinstance(exc, CliError):
        return exc.name
    if isinstance(exc, click.BadParameter):
        return "invalid_argument"
    if isinstance(exc, click.UsageError):
        return "usage_error"
    return "error"


class JsonErrorGroup(click.Group):
    """A click group whose every error (usage ones too) is also JSON when `-o json` is given."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if wants_json(argv):
                details = exc.details if isinstance(exc, CliError) else {}
                click.echo(error_json(_usage_name(exc), exc.format_message(), details))
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
