"""Processes of this machine as tests see them: command lines, and the postmasters of a tree."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
    """PIDs of postmasters whose data directory lies under `root` (orphans included). A
    backend the postmaster has just forked has its command line until it sets its title: a
    process whose parent is one of them is not counted."""
    found = [
        pid
        for pid, argv in cmdlines()
        if argv[0].endswith("/postgres")
        and "-D" in argv[:-1]
        and argv[argv.index("-D") + 1].startswith(str(root))
    ]
    return [pid for pid in found if _parent(pid) not in found]


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, the last ")" ends it.
    return int(stat.rsplit(")", 1)[1].split()[1])


def secret_holders(needles: Iterable[str], *, allowed: frozenset[str]) -> list[str]:
    """`pid (name): where` for every process whose environment or command line holds one of
    `needles`, but for processes named in `allowed` (the commands the secrets are meant for)."""
    found = []
    wanted = [n.encode() for n in needles]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            if name in allowed:
                continue
            parts = {"environ": (entry / "environ").read_bytes()}
            parts["cmdline"] = (entry / "cmdline").read_bytes()
        except OSError:  # gone, or a kernel thread
            continue
        found += [
            f"{entry.name} ({name}): {where}"
            for where, raw in parts.items()
            if any(w in raw for w in wanted)
        ]
    return found


def files_holding(root: Path, needles: Iterable[str]) -> list[Path]:
    """Regular files under `root` whose bytes hold one of `needles` (symlinks not followed)."""
    wanted = [n.encode() for n in needles]
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if any(w in data for w in wanted):
                    found.append(path)
        except OSError:
            continue
    return found


def instance_postmaster(instance_id: str) -> int | None:
    """The postmaster of instance `instance_id`, local or in a container: its command line names
    the instance's directory (`-D` locally, `config_file=` in a container)."""
    marker = f"/instances/{instance_id}/"
    for pid, argv in cmdlines():
        if argv[0].endswith("/postgres") and "-D" in argv and any(marker in a for a in argv):
            return pid
    return None
