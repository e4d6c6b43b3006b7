"""Run commands as the OS user that owns Postgres, from a test process that may be root."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

OS_USER = os.environ.get("CONTROLPLANE_OS_USER", "postgres")


def as_os_user(argv: list[str]) -> list[str]:
    """Prefix argv with runuser when running as root (Postgres refuses to run as root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", OS_USER, "--", *argv]
    return argv


def run_as_os_user(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run argv as the OS user, capture text output, raise on failure."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        as_os_user(argv), check=True, capture_output=True, text=True, **kwargs
    )


def give_to_os_user(path: Path) -> None:
    """Make `path` (a directory) enterable and owned by the OS user."""
    path.chmod(0o755)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(OS_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
