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
    """Restore `label` to its consistency point with archiving off, start it, run `sql`.

    `env` carries repository secrets to both the restore and the server (whose restore_command
    runs archive-get). A failing restore or start raises CalledProcessError with the output.
    """
    target = scratch / f"restore-{label}"
    target.mkdir()
    give_to_os_user(target)
    target.chmod(0o700)
    try:
        _run(
            [
                "pgbackrest",
                f"--config={config_path}",
                "--stanza=db",
                f"--pg1-path={target}",
                f"--set={label}",
                # Not the live instance's spool: a restore clears the archive-get queue there
                # while the instance's own archiving may be writing (pgBackRest [061]).
                f"--spool-path={scratch / f'spool-{label}'}",
                "--type=immediate",
                "--target-action=promote",
                "--archive-mode=off",
                "restore",
            ],
            env,
        )
        port = free_port()
        options = (
            f"-c port={port} -c listen_addresses='' -c unix_socket_directories={scratch}"
            " -c archive_mode=off -c shared_preload_libraries=''"
        )
        log = scratch / f"restore-{label}.log"
        try:
            _run(
                [
                    str(PG_BIN / "pg_ctl"),
                    "start",
                    "-w",
                    "-D",
                    str(target),
                    "-o",
                    options,
                    "-l",
                    str(log),
                ],
                env,
            )
        except subprocess.CalledProcessError as exc:
            exc.output = log.read_text() if log.exists() else exc.output
            raise
        try:
            for _ in range(300):
                if _psql(scratch, port, "SELECT pg_is_in_recovery()", "postgres") == "f":
                    break
            return _psql(scratch, port, sql, database)
        finally:
            subprocess.run(
                as_os_user([str(PG_BIN / "pg_ctl"), "stop", "-m", "fast", "-D", str(target)]),
                check=False,
                capture_output=True,
            )
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _run(argv: list[str], env: dict[str, str] | None) -> None:
    subprocess.run(as_os_user(argv), check=True, capture_output=True, text=True, env=env)


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
