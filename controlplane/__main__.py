"""`python -m controlplane` is the `controlplane` command."""

from controlplane.cli import main

main(prog_name="controlplane")
