"""The Patroni processes of the local orchestrator: one per instance of a node with replicas.

Patroni starts, stops, promotes and rewinds that instance's Postgres; the orchestrator starts
and stops Patroni. Like a postmaster, a Patroni process is not a child of the control plane:
it runs detached, as the instances' OS user, and keeps running when the control plane stops.

Repository secrets reach pgBackRest as they do for a postmaster the control plane starts: the
sealed memory file is handed to Patroni on descriptor 9. Patroni starts Postgres with every
other descriptor closed, so Postgres is started through `bin/postgres` in the instance
directory, a wrapper that reopens Patroni's descriptor 9 (its PID is in the environment Patroni
passes on) before it execs the real binary. The postmaster then holds the same file on its
own descriptor 9, where `pgbackrest-run` looks for it, and no environment holds a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from controlplane.errors import ExternalCommandError
from controlplane.orchestrator import instance_secrets as secrets
from controlplane.orchestrator.patroni import wait_for_role
from controlplane.system.files import OwnedFiles
from controlplane.system.process import as_user, run_command

CONFIG_FILE = "patroni.json"
PID_FILE = "patroni.pid"
LOG_FILE = "patroni.log"
BIN_DIR = "bin"
SECRETS_PID = "CONTROLPLANE_SECRETS_PID"
# The memory file arrives on stdin and becomes descriptor 9; an inner shell records its own PID,
# exports it and becomes Patroni (so the PID is Patroni's), in the background: nobody's child.
_LAUNCH = (
    f"exec {secrets.SECRETS_FD}<&0 </dev/null; "
    'sh -c \'echo $$ > "$1"; export ' + SECRETS_PID + '=$$; shift; exec "$@"\' '
    'sh "$@" >>"$LOG" 2>&1 &'
)
_STOP_GRACE_SECONDS = 120.0
# The copies of the configuration files Patroni keeps in a data directory it runs.
_PATRONI_COPIES = ("postgresql.conf.backup", "pg_hba.conf.backup", "pg_ident.conf.backup")


def release_data_dir(pgdata: Path) -> None:
    """A data directory Patroni ran, as pg_ctl runs it: Patroni's `postgresql.conf` replaced by
    the one it had moved aside, and its own files (`patroni.dynamic.json`, `*.backup` copies)
    gone. The files keep their owner (a rename within the directory)."""
    base = pgdata / "postgresql.base.conf"
    if base.exists():
        os.replace(base, pgdata / "postgresql.conf")
    for name in ("patroni.dynamic.json", *_PATRONI_COPIES):
        with contextlib.suppress(FileNotFoundError):
            (pgdata / name).unlink()


def postgres_wrapper(real_postgres: Path) -> str:
    """`bin/postgres`: the real binary, with Patroni's descriptor 9 reopened on its own."""
    fd = secrets.SECRETS_FD
    return f"""#!/bin/sh
# Managed by controlplane: Postgres as Patroni starts it, holding the repository secrets' file
# Patroni was handed (its descriptor {fd}) on descriptor {fd}, for pgbackrest-run.
if [ -n "${SECRETS_PID}" ] && [ -r "/proc/${SECRETS_PID}/fd/{fd}" ]; then
  exec {fd}<"/proc/${SECRETS_PID}/fd/{fd}"
fi
exec {real_postgres} "$@"
"""


class PatroniProcesses:
    """Start, find and stop the Patroni of an instance directory."""

    def __init__(self, files: OwnedFiles, os_user: str, patroni_bin: Path, pg_bin: Path) -> None:
        self._files = files
        self._os_user = os_user
        self._patroni = patroni_bin
        self._pg_bin = pg_bin

    def prepare(self, home: Path) -> None:
        """The instance's `bin/`: every server program linked, `postgres` wrapped."""
        bin_dir = home / BIN_DIR
        self._files.private_dir(bin_dir, 0o700)
        for program in sorted(self._pg_bin.iterdir()):
            target = bin_dir / program.name
            if program.name == "postgres":
                self._files.write(target, postgres_wrapper(program), executable=True)
            elif not target.is_symlink():
                with contextlib.suppress(FileExistsError):
                    target.symlink_to(program)

    def config(self, home: Path) -> dict[str, Any] | None:
        """The member's configuration as written (None: the instance is not a member)."""
        try:
            parsed: dict[str, Any] = json.loads((home / CONFIG_FILE).read_text())
        except FileNotFoundError:
            return None
        return parsed

    def pid(self, home: Path) -> int | None:
        """The running Patroni of this instance directory, if any."""
        try:
            pid = int((home / PID_FILE).read_text().strip())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ValueError, ProcessLookupError, IndexError):
            return None
        config = str(home / CONFIG_FILE).encode()
        if state == "Z" or config not in argv:
            return None
        return pid

    async def start(self, home: Path, handed: int, env: dict[str, str]) -> None:
        """Start the instance's Patroni unless it runs; `handed` becomes its descriptor 9."""
        if self.pid(home) is not None:
            return
        self.prepare(home)
        argv = [str(self._patroni), str(home / CONFIG_FILE)]
        result = await run_command(
            as_user(["sh", "-c", _LAUNCH, "sh", str(home / PID_FILE), *argv], self._os_user),
            env={**env, "LOG": str(home / LOG_FILE)},
            inherit_env=False,
            stdin=handed,
        )
        if result.exit_code != 0:
            raise ExternalCommandError(
                f"patroni of {home.name} did not start: exit {result.exit_code}",
                exit_code=result.exit_code,
            )
        deadline = time.monotonic() + 10
        while self.pid(home) is None:
            if time.monotonic() > deadline:
                raise ExternalCommandError(f"patroni of {home.name} exited: {self.log_tail(home)}")
            await asyncio.sleep(0.1)

    async def stop(self, home: Path) -> bool:
        """SIGTERM Patroni (it stops Postgres, and a leader hands over first); SIGKILL after
        the grace period. True when it was running."""
        pid = self.pid(home)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        while self.pid(home) == pid:
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                break
            await asyncio.sleep(0.2)
        return True

    async def wait_ready(self, home: Path, role: str, limit: float = 600.0) -> None:
        """Until the member answers as `role` (primary: writable leader; replica: streaming
        or at least running in recovery)."""
        config = self.config(home)
        if config is None:
            raise ExternalCommandError(f"instance {home.name} has no Patroni configuration")

        async def alive() -> bool:
            return self.pid(home) is not None

        async def log_tail() -> str:
            return self.log_tail(home)

        await wait_for_role(
            config, role, member=home.name, alive=alive, log_tail=log_tail, limit=limit
        )

    def log_tail(self, home: Path, lines: int = 8) -> str:
        try:
            text = (home / LOG_FILE).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])
