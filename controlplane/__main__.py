"""`python -m controlplane` is the `controlplane` command."""

from controlplane.cli import main

main()
