"""A scratch PostgreSQL 15 cluster for tests (the state store of test servers)."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
from pathlib import Path

from tests.support.os_user import as_os_user

PG_BIN = Path("/usr/lib/postgresql/15/bin")


# Ports for the tests' own servers come from a range of this process's, below the kernel's
# ephemeral ports (32768 on): a port picked free is bound a moment later, and a port the
# kernel handed out (what a control plane under test picks) or another test process picked
# could be taken in between. xdist workers gw0, gw1, … get ranges 0, 1, …; other processes
# one of the ranges after those, by PID.
_RANGE = 1000
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_SLOT = int(_WORKER[2:]) if _WORKER.startswith("gw") else 4 + os.getpid() % 8
_BASE = 20000 + _SLOT * _RANGE
_picks = itertools.count()


def free_port() -> int:
    """A port free on 127.0.0.1 now, from this process's range, never the one picked last."""
    for _ in range(_RANGE):
        port = _BASE + next(_picks) % _RANGE
        if bind_succeeds("127.0.0.1", port) and bind_succeeds("0.0.0.0", port):
            return port
    raise AssertionError(f"no free port in {_BASE}-{_BASE + _RANGE - 1}")


def bind_succeeds(address: str, port: int) -> bool:
    """True when `address:port` could be bound now (as the control plane checks a port)."""
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


class ScratchCluster:
    """initdb + pg_ctl start in `root` (a 0755 dir owned by the OS user), socket in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()

    @property
    def socket_dir(self) -> str:
        return str(self.root)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}&port={self.port}"

    def start(self) -> None:
        subprocess.run(
            as_os_user(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            check=True,
            capture_output=True,
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = ''\nunix_socket_directories = '{self.root}'\n"
                f"port = {self.port}\nmax_connections = 300\nfsync = off\n"
            )
        subprocess.run(
            as_os_user(
                [
                    str(PG_BIN / "pg_ctl"),
                    "start",
                    "-w",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "server.log"),
                ]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            as_os_user([str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.data)]),
            check=False,
            capture_output=True,
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            as_os_user(
                [
                    str(PG_BIN / "psql"),
                    "-h",
                    str(self.root),
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                    "-AtX",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    sql,
                ]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()
