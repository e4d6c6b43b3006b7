"""Processes of this machine as tests see them: command lines, and the postmasters of a tree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def cmdlines() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process whose command line can be read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield int(entry.name), raw.rstrip(b"\0").decode(errors="replace").split("\0")


def postmasters_under(root: Path) -> list[int]:
    """PIDs of postmasters whose data directory lies under `root` (orphans included)."""
    return [
        pid
        for pid, argv in cmdlines()
        if argv[0].endswith("/postgres")
        and "-D" in argv[:-1]
        and argv[argv.index("-D") + 1].startswith(str(root))
    ]
