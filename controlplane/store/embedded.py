"""Embedded state store: a private Postgres cluster under `<data_dir>/store`, unix socket only.

Every connection authenticates with a password (SCRAM): the instances run as the same OS user
as the store, and a socket directory only that user can enter would not keep out a process of
theirs. The password is generated on first start and kept in `<data_dir>/store.password`, a
file only the control plane's own user can read.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
from pathlib import Path
from urllib.parse import quote

import asyncpg

from controlplane.errors import DependencyError
from controlplane.settings import Settings
from controlplane.system.files import OwnedFiles
from controlplane.system.process import as_user, run_command

log = logging.getLogger(__name__)

STORE_USER = "controlplane"
STORE_DATABASE = "postgres"
STORE_PORT = 5432
_HBA = """\
# Managed by controlplane: every connection to the state store authenticates.
local   all   all   scram-sha-256
"""


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
    def password_path(self) -> Path:
        return self._settings.data_path / "store.password"

    @property
    def dsn(self) -> str:
        password = quote(self._password(), safe="")
        return (
            f"postgresql://{STORE_USER}:{password}@/{STORE_DATABASE}"
            f"?host={self.socket_dir}&port={STORE_PORT}"
        )

    def _password(self) -> str:
        """The store role's password, generated (mode 0600, our own user) on first use."""
        path = self.password_path
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        return path.read_text().strip()

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
            await self._require_passwords()
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
        await self._require_passwords()
        return self.dsn

    async def _require_passwords(self) -> None:
        """Give the store role its password and make every connection use one (a store made
        before this, or just initialised, still trusts its socket until then)."""
        hba = self.data_dir / "pg_hba.conf"
        if hba.read_text() == _HBA:
            return
        conn = await asyncpg.connect(
            host=str(self.socket_dir), port=STORE_PORT, user=STORE_USER, database=STORE_DATABASE
        )
        try:
            await conn.execute("SET log_statement = 'none'")  # the password is in the statement
            await conn.execute(
                await conn.fetchval(
                    "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)",
                    STORE_USER,
                    self._password(),
                )
            )
            hba.write_text(_HBA)
            self._chown(hba)
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        log.info("embedded store: connections now authenticate with a password")

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
        files = OwnedFiles(self._settings.os_user)
        files.private_dir(self.data_dir, 0o700)
        files.private_dir(self.socket_dir.parent, 0o755)
        files.private_dir(self.socket_dir, 0o700)

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
        # No TCP listener; the socket lives in a 0700 directory, and connections authenticate.
        text = (
            "listen_addresses = ''\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "unix_socket_permissions = 0700\n"
            f"port = {STORE_PORT}\n"
            "max_connections = 200\n"
            "password_encryption = 'scram-sha-256'\n"
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
