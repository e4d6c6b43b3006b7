"""Embedded state store: a private Postgres cluster under `<data_dir>/store`, unix socket only."""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path

from controlplane.errors import DependencyError
from controlplane.process import as_user, run_command
from controlplane.settings import Settings

log = logging.getLogger(__name__)

STORE_USER = "controlplane"
STORE_DATABASE = "postgres"
STORE_PORT = 5432


class EmbeddedStore:
    """Initialises, starts and stops the private cluster; a restart reuses it.

    The cluster is not a child of the control plane (pg_ctl daemonises it), so a SIGKILLed server
    leaves it running and the next start simply reuses it.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.data_dir = settings.data_path / "store"
        self.socket_dir = settings.run_dir / "store"
        self.started_here = False

    @property
    def dsn(self) -> str:
        return (
            f"postgresql://{STORE_USER}@/{STORE_DATABASE}?host={self.socket_dir}&port={STORE_PORT}"
        )

    def _pg(self, program: str) -> str:
        return str(self._settings.pg_bin_dir / program)

    def _run(self, argv: list[str]) -> list[str]:
        return as_user(argv, self._settings.os_user)

    async def start(self) -> str:
        """Make sure the cluster exists and runs; return its DSN."""
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            await self._initdb()
        self._write_conf()
        status = await run_command(
            self._run([self._pg("pg_ctl"), "status", "-D", str(self.data_dir)])
        )
        if status.exit_code == 0:
            log.info("embedded store already running in %s", self.data_dir)
            return self.dsn
        self._remove_stale_pid()
        result = await run_command(
            self._run(
                [
                    self._pg("pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.data_dir / "server.log"),
                ]
            )
        )
        if result.exit_code != 0:
            raise DependencyError(f"embedded store failed to start: {result.tail(10)}")
        self.started_here = True
        log.info("embedded store started in %s", self.data_dir)
        return self.dsn

    async def stop(self) -> None:
        """Stop the cluster cleanly (fast shutdown: sessions are ours)."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        await run_command(
            self._run([self._pg("pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.data_dir)])
        )

    def _prepare_dirs(self) -> None:
        data_path = self._settings.data_path
        data_path.mkdir(parents=True, exist_ok=True)
        # The OS user must be able to traverse the data dir to reach its own subdirectories.
        data_path.chmod(0o755)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.parent.mkdir(mode=0o755, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        for path in (self.data_dir, self.socket_dir, self.socket_dir.parent):
            self._chown(path)
        self.data_dir.chmod(0o700)
        self.socket_dir.chmod(0o700)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self._settings.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    async def _initdb(self) -> None:
        result = await run_command(
            self._run(
                [
                    self._pg("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    STORE_USER,
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--auth=trust",
                ]
            )
        )
        if result.exit_code != 0:
            raise DependencyError(f"initdb of the embedded store failed: {result.tail(10)}")
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("\ninclude_if_exists = 'controlplane.conf'\n")

    def _write_conf(self) -> None:
        # Trust auth is safe here: no TCP listener, and the socket lives in a 0700 directory.
        text = (
            "listen_addresses = ''\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "unix_socket_permissions = 0700\n"
            f"port = {STORE_PORT}\n"
            "max_connections = 200\n"
        )
        path = self.data_dir / "controlplane.conf"
        path.write_text(text)
        self._chown(path)

    def _remove_stale_pid(self) -> None:
        """Drop a postmaster.pid whose PID now belongs to a non-postgres process.

        Postgres itself ignores a pid file whose PID is dead, but after a reboot the PID may have
        been reused by an unrelated process, which makes it refuse to start.
        """
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if b"postgres" not in cmdline:
            log.warning("removing stale postmaster.pid of the embedded store (pid %d)", pid)
            pid_file.unlink(missing_ok=True)
