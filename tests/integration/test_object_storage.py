"""Smoke tests: real pgBackRest backs up a real PG15 cluster to S3, Azure and GCS servers and
restores it, all on 127.0.0.1 with TLS (servers from tests/support/object_storage.py).

Skipped only when the servers are not installed (run tests/support/install-object-storage.sh).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.object_storage import (
    INSTALL_SCRIPT,
    KINDS,
    Kind,
    ObjectStorage,
    free_port,
    missing_requirements,
    start_object_storage,
)
from tests.support.os_user import OS_USER, as_os_user, give_to_os_user

_MISSING = missing_requirements()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"object-storage servers not installed ({'; '.join(_MISSING)}): "
        f"run {INSTALL_SCRIPT}",
    ),
]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGBACKREST = shutil.which("pgbackrest") or "/usr/bin/pgbackrest"
STANZA = "smoke"
ROWS = 500
IO_TIMEOUT = 10  # seconds; a dead endpoint costs a command about 8 x this (nested retries)
ARCHIVE_TIMEOUT = 20
COMMAND_TIMEOUT = 180  # hard bound on any one command, so a hang fails instead of blocking


def _bin(name: str) -> str:
    return str(PG_BIN / name)


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL data directory and where it listens."""

    data: Path
    port: int
    socket_dir: Path
    log: Path


def _run(
    argv: list[str], env: dict[str, str] | None = None, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run argv as the postgres OS user with ``env`` added to the environment."""
    result = subprocess.run(
        as_os_user(argv),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    give_to_os_user(path)
    return path


def _psql(cluster: Cluster, sql: str) -> str:
    return _run(
        [
            _bin("psql"),
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(cluster.socket_dir),
            "-p",
            str(cluster.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ]
    ).stdout.strip()


def _pg_start(cluster: Cluster, env: dict[str, str]) -> None:
    """Start the cluster; the postmaster (and so archive_command) inherits ``env``."""
    _run(
        [
            _bin("pg_ctl"),
            "-D",
            str(cluster.data),
            "-l",
            str(cluster.log),
            "-o",
            f"-p {cluster.port}",
            "-w",
            "-t",
            "60",
            "start",
        ],
        env,
    )


def _pg_stop(cluster: Cluster) -> None:
    """Fast shutdown; if that does not finish in 30 s (e.g. the archiver retries a dead
    repository), immediate shutdown, so no postgres outlives the test."""
    if not (cluster.data / "postmaster.pid").exists():
        return
    pg_ctl = [_bin("pg_ctl"), "-D", str(cluster.data), "-w", "-t", "30", "stop"]
    if _run([*pg_ctl, "-m", "fast"], check=False).returncode != 0:
        _run([*pg_ctl, "-m", "immediate"], check=False)


def _init_cluster(scratch: Path, conf: Path, name: str) -> Cluster:
    """initdb a tiny cluster that archives WAL through pgBackRest."""
    cluster = Cluster(
        data=scratch / name,
        port=free_port(),
        socket_dir=_mkdir(scratch / "sock"),
        log=scratch / f"{name}.log",
    )
    _run(
        [
            _bin("initdb"),
            "-D",
            str(cluster.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]
    )
    settings = f"""
listen_addresses = '127.0.0.1'
port = {cluster.port}
unix_socket_directories = '{cluster.socket_dir}'
archive_mode = on
archive_command = '{PGBACKREST} --config={conf} --stanza={STANZA} archive-push %p'
wal_level = replica
fsync = off
shared_buffers = 16MB
"""
    with open(cluster.data / "postgresql.conf", "a") as f:
        f.write(settings)
    return cluster


def _write_pgbackrest_conf(
    path: Path, storage: ObjectStorage, scratch: Path, cluster: Cluster
) -> None:
    """A hand-made pgbackrest.conf (postgres, 0600) without secrets: those go in the env."""
    lines = ["[global]"]
    lines += [f"{key}={value}" for key, value in storage.pgbackrest_options().items()]
    lines += [
        "repo1-retention-full=2",
        f"log-path={_mkdir(scratch / 'pgbr' / 'log')}",
        f"lock-path={_mkdir(scratch / 'pgbr' / 'lock')}",
        f"spool-path={_mkdir(scratch / 'pgbr' / 'spool')}",
        "log-level-console=info",
        "log-level-file=detail",
        "start-fast=y",
        # As controlplane renders it (controlplane/pgbackrest/config.py). Bundling also matters for
        # speed: gcp-storage-emulator rewrites its whole metadata file on every object written.
        "repo1-bundle=y",
        "compress-type=zst",
        "process-max=2",
        f"io-timeout={IO_TIMEOUT}",
        f"archive-timeout={ARCHIVE_TIMEOUT}",
        "",
        f"[{STANZA}]",
        f"pg1-path={cluster.data}",
        f"pg1-port={cluster.port}",
        f"pg1-socket-path={cluster.socket_dir}",
        "",
    ]
    path.write_text("\n".join(lines))
    shutil.chown(path, OS_USER, OS_USER)
    path.chmod(0o600)
    text = path.read_text()
    for secret in storage.pgbackrest_env().values():
        assert secret not in text


def _pgbackrest(
    conf: Path, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return _run([PGBACKREST, f"--config={conf}", f"--stanza={STANZA}", *args], env, check=check)


def _fingerprint(cluster: Cluster) -> str:
    return _psql(
        cluster,
        "select count(*) || ' ' || md5(string_agg(id || ':' || v, ',' order by id)) from smoke",
    )


def _wait_promoted(cluster: Cluster, timeout: float = 60.0) -> None:
    """``pg_ctl start -w`` returns during recovery (hot standby): wait until it has ended."""
    deadline = time.monotonic() + timeout
    while _psql(cluster, "select pg_is_in_recovery()") != "f":
        assert time.monotonic() < deadline, f"still in recovery after {timeout} s"
        time.sleep(0.2)


@pytest.mark.parametrize("kind", KINDS)
def test_backup_and_restore_through_object_storage(kind: Kind, scratch_dir: Path) -> None:
    """A full backup to the real server restores into a new node with identical rows."""
    conf = scratch_dir / "pgbackrest.conf"
    clusters: list[Cluster] = []
    with start_object_storage(kind, scratch_dir / "storage") as storage:
        env = storage.pgbackrest_env()
        try:
            source = _init_cluster(scratch_dir, conf, "pg-src")
            _write_pgbackrest_conf(conf, storage, scratch_dir, source)
            clusters.append(source)
            _pg_start(source, env)
            _pgbackrest(conf, env, "stanza-create")
            _psql(source, "create table smoke (id int primary key, v text not null)")
            _psql(
                source,
                f"insert into smoke select g, md5(g::text) from generate_series(1, {ROWS}) g",
            )
            expected = _fingerprint(source)
            assert expected.startswith(f"{ROWS} ")
            _pgbackrest(conf, env, "--type=full", "backup")
            [info] = json.loads(_pgbackrest(conf, env, "--output=json", "info").stdout)
            assert info["status"]["code"] == 0, info
            assert [b["type"] for b in info["backup"]] == ["full"], info

            restored = Cluster(
                data=scratch_dir / "pg-restored",
                port=free_port(),
                socket_dir=source.socket_dir,
                log=scratch_dir / "pg-restored.log",
            )
            _run(["mkdir", "-m", "0700", str(restored.data)])
            _pgbackrest(
                conf,
                env,
                f"--pg1-path={restored.data}",
                "--archive-mode=off",
                "--type=immediate",
                "--target-action=promote",
                "restore",
            )
            clusters.append(restored)
            _pg_start(restored, env)
            _wait_promoted(restored)
            assert _fingerprint(restored) == expected
        finally:
            for cluster in reversed(clusters):
                _pg_stop(cluster)


def test_stopped_server_makes_check_fail_fast(scratch_dir: Path) -> None:
    """With the S3 server gone, ``pgbackrest check`` fails in bounded time, naming the host."""
    conf = scratch_dir / "pgbackrest.conf"
    clusters: list[Cluster] = []
    with start_object_storage("s3", scratch_dir / "storage") as storage:
        env = storage.pgbackrest_env()
        try:
            source = _init_cluster(scratch_dir, conf, "pg-src")
            _write_pgbackrest_conf(conf, storage, scratch_dir, source)
            clusters.append(source)
            _pg_start(source, env)
            _pgbackrest(conf, env, "stanza-create")
            storage.cleanup()  # the repository's server goes away

            # pgBackRest 2.45 retries a refused connection at several nested levels (socket, TLS,
            # HTTP request, archive.info then archive.info.copy): the command fails after about
            # 8 x io-timeout (81 s at io-timeout=10, 9 s at 1), so pass a small one here.
            io_timeout = 1
            started = time.monotonic()
            result = _pgbackrest(conf, env, f"--io-timeout={io_timeout}", "check", check=False)
            elapsed = time.monotonic() - started
            output = result.stdout + result.stderr
            assert result.returncode != 0, output
            # Seen with pgBackRest 2.45: 49, "unable to load info file ... archive.info ...:
            # HostConnectError: unable to connect to 'localhost:PORT': [111] Connection refused".
            assert result.returncode in (39, 41, 49), output
            assert f"localhost:{storage.port}" in output, output
            assert elapsed < 12 * io_timeout + 15, f"check took {elapsed:.1f} s\n{output}"
        finally:
            for cluster in clusters:
                # Shutdown archives the last WAL segment: against a dead repository each
                # archive-push would retry for minutes, so stop archiving first.
                with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                    _psql(cluster, "alter system set archive_command = ''")
                    _psql(cluster, "select pg_reload_conf()")
            for cluster in reversed(clusters):
                _pg_stop(cluster)
