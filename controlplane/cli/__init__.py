"""The `controlplane` command."""

from controlplane.cli.commands import main

__all__ = ["main"]
