"""`python -m controlplane` is the `controlplane` command."""

from controlplane.cli.commands import main

main(prog_name="controlplane")
