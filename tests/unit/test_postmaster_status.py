"""Whether a data directory's postmaster runs, read from postmaster.pid as pg_ctl reads it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.system.postgres import postmaster_running


@pytest.fixture
def pgdata(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def postgres_like() -> Iterator[int]:
    """A live process whose command line says postgres: Python runs the code itself (a shell
    may exec its last command, and its command line change). Popen returns when the exec has
    begun; the kernel fills in the new command line a moment later, so wait for it, as a
    postmaster has long before it writes postmaster.pid."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "postgres"])
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while b"postgres" not in cmdline.read_bytes():
        assert time.monotonic() < deadline, "the sleeper's command line never showed"
        time.sleep(0.01)
    yield proc.pid
    proc.kill()
    proc.wait()


def _pid_file(pgdata: Path, first_line: str) -> None:
    (pgdata / "postmaster.pid").write_text(f"{first_line}\n{pgdata}\n1700000000\n5432\n")


def test_no_pid_file_is_stopped(pgdata: Path) -> None:
    assert postmaster_running(pgdata) is False


def test_a_live_postgres_pid_is_running(pgdata: Path, postgres_like: int) -> None:
    _pid_file(pgdata, str(postgres_like))
    assert postmaster_running(pgdata) is True


def test_a_pid_reused_by_another_program_is_stopped(pgdata: Path) -> None:
    _pid_file(pgdata, str(os.getpid()))  # this test runner: alive, not postgres
    assert postmaster_running(pgdata) is False


def test_a_dead_pid_is_stopped(pgdata: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    _pid_file(pgdata, str(proc.pid))
    assert postmaster_running(pgdata) is False


def test_a_file_being_written_asks_pg_ctl(pgdata: Path) -> None:
    _pid_file(pgdata, "")
    assert postmaster_running(pgdata) is None
