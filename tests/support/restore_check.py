"""Restore a backup set by hand (plain pgbackrest) into a scratch data dir and query it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.os_user import as_os_user, give_to_os_user
from tests.support.pgcluster import PG_BIN, free_port


def restore_and_query(
    config_path: str,
    label: str,
    sql: str,
    scratch: Path,
    *,
    env: dict[str, str] | None = None,
    database: str = "app",
) -> str:
    """Restore `label` to its consistency point with archiving off, start it, run `sql`."""
    target = scratch / f"restore-{label}"
    target.mkdir()
    give_to_os_user(target)
    target.chmod(0o700)
    subprocess.run(
        as_os_user(
            [
                "pgbackrest",
                f"--config={config_path}",
                "--stanza=db",
                f"--pg1-path={target}",
                f"--set={label}",
                "--type=immediate",
                "--target-action=promote",
                "--archive-mode=off",
                "restore",
            ]
        ),
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    port = free_port()
    options = (
        f"-c port={port} -c listen_addresses='' -c unix_socket_directories={scratch}"
        " -c archive_mode=off -c shared_preload_libraries=''"
    )
    subprocess.run(
        as_os_user(
            [
                str(PG_BIN / "pg_ctl"),
                "start",
                "-w",
                "-D",
                str(target),
                "-o",
                options,
                "-l",
                str(scratch / f"restore-{label}.log"),
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        for _ in range(300):
            state = _psql(scratch, port, "SELECT pg_is_in_recovery()", "postgres")
            if state == "f":
                break
        return _psql(scratch, port, sql, database)
    finally:
        subprocess.run(
            as_os_user([str(PG_BIN / "pg_ctl"), "stop", "-m", "fast", "-D", str(target)]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(target, ignore_errors=True)


def _psql(socket_dir: Path, port: int, sql: str, database: str) -> str:
    result = subprocess.run(
        as_os_user(
            [
                str(PG_BIN / "psql"),
                "-h",
                str(socket_dir),
                "-p",
                str(port),
                "-U",
                "postgres",
                "-d",
                database,
                "-AtX",
                "-c",
                sql,
            ]
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip()
