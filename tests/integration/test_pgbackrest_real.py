"""Our rendered config and argv against real pgBackRest 2.45 and a real PostgreSQL 15 cluster."""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest

from controlplane.pgbackrest.command import (
    backup_argv,
    check_argv,
    info_argv,
    restore_argv,
    stanza_create_argv,
)
from controlplane.pgbackrest.config import (
    InstanceLayout,
    archive_command,
    ensure_state_dirs,
    plan_repositories,
    render_config,
    secret_env,
    write_config_atomic,
)
from controlplane.pgbackrest.info import (
    catalog,
    current_system_id,
    find_by_task,
    parse_info,
    stanza_problem,
)
from controlplane.spec.models import BackupConfig
from tests.support.os_user import OS_USER, as_os_user

PG_BIN = Path("/usr/lib/postgresql/15/bin")
CHECKSUM_SQL = "select count(*) || ':' || md5(string_agg(i::text || v, ',' order by i)) from t"
T = TypeVar("T")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("pgbackrest") is None or not PG_BIN.is_dir(),
        reason="needs pgbackrest and PostgreSQL 15",
    ),
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run(argv: list[str], env: Mapping[str, str] | None = None) -> str:
    """Run argv as the OS user with extra environment; fail the test with its output."""
    result = subprocess.run(
        as_os_user(argv),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def eventually(fn: Callable[[], T | None], timeout: float) -> T:
    """Poll fn until it returns something other than None, or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value is not None:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def mkdir_for_os_user(path: Path, mode: int = 0o755) -> Path:
    """Create a directory owned by the OS user (postgres insists on 0700 data dirs)."""
    path.mkdir(mode=mode)
    path.chmod(mode)
    entry = pwd.getpwnam(OS_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


class Cluster:
    """A PG15 cluster run by pg_ctl as the OS user, on 127.0.0.1 and a short socket dir."""

    def __init__(self, data: Path, port: int, socket_dir: Path) -> None:
        self.data, self.port, self.socket_dir = data, port, socket_dir

    def start(self, env: Mapping[str, str], *options: str) -> None:
        """Start and wait; `env` reaches the archiver, hence archive-push and archive-get."""
        opts = " ".join([f"-p {self.port}", *options])
        log = str(self.data.parent / f"{self.data.name}.log")
        run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", opts, "-w", "start"],
            env,
        )

    def stop(self) -> None:
        """Stop fast if it runs (used in finally blocks)."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                as_os_user(
                    [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
                ),
                capture_output=True,
                check=False,
                timeout=60,
            )

    def sql(self, *commands: str) -> str:
        """Run each command in its own transaction (separate -c) and return the last output."""
        argv = ["psql", "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-XAt"]
        for command in commands:
            argv += ["-c", command]
        return run(argv).strip()


def initdb(data: Path) -> None:
    """initdb a cluster as the OS user, trusting local connections."""
    initdb_bin = str(PG_BIN / "initdb")
    run([initdb_bin, "-D", str(data), "-U", "postgres", "--auth=trust", "--locale=C.UTF-8"])


def configure_source(scratch_dir: Path) -> tuple[Path, dict[str, str], Cluster]:
    """Render and write the config of an encrypted posix repo, initdb a cluster archiving to it."""
    entry = pwd.getpwnam(OS_USER)
    layout = InstanceLayout(
        instance_dir=str(mkdir_for_os_user(scratch_dir / "n1")),
        pg_data=str(scratch_dir / "n1" / "pgdata"),
        pg_port=free_port(),
        pg_socket_dir=str(mkdir_for_os_user(scratch_dir / "s")),
    )
    repository = {"type": "posix", "id": "local", "base_path": str(scratch_dir / "repos")}
    config = msgspec.convert({"repositories": [{**repository, "cipher": True}]}, BackupConfig)
    mkdir_for_os_user(scratch_dir / "repos")
    plans = plan_repositories(
        config,
        database_id="storefront",
        node_name="n1",
        cipher_passes={"local": secrets.token_urlsafe(32)},
    )
    # The passphrase reaches pgBackRest only through the environment, never the file.
    env = secret_env(plans)
    conf = scratch_dir / "n1" / "pgbackrest.conf"
    text = render_config(layout, plans, process_max=2, archive_timeout=20)
    assert write_config_atomic(conf, text, uid=entry.pw_uid, gid=entry.pw_gid) is True
    assert write_config_atomic(conf, text, uid=entry.pw_uid, gid=entry.pw_gid) is False
    assert (conf.stat().st_mode & 0o777, conf.stat().st_uid) == (0o600, entry.pw_uid)
    assert env["PGBACKREST_REPO1_CIPHER_PASS"] not in conf.read_text()
    ensure_state_dirs(layout, uid=entry.pw_uid, gid=entry.pw_gid)

    source = Cluster(Path(layout.pg_data), layout.pg_port, Path(layout.pg_socket_dir))
    initdb(source.data)
    quoted = archive_command(str(conf)).replace("'", "''")
    with open(source.data / "postgresql.conf", "a", encoding="utf-8") as conf_file:
        conf_file.write(
            f"listen_addresses = '127.0.0.1'\nunix_socket_directories = '{source.socket_dir}'\n"
            f"archive_mode = on\narchive_command = '{quoted}'\nwal_level = replica\n"
        )
    return conf, env, source


def take_backups(conf: Path, env: dict[str, str], source: Cluster) -> str:
    """stanza-create, check, full, incr, then more changes archived; returns the checksum."""
    run(stanza_create_argv(str(conf)), env)
    run(check_argv(str(conf)), env)
    source.sql(
        "create table t (i int primary key, v text)",
        "insert into t select g, md5(g::text) from generate_series(1, 1000) g",
    )
    run(backup_argv(str(conf), type="full", task_id="task-full", annotations={"why": "it"}), env)
    source.sql("insert into t select g, md5(g::text) from generate_series(1001, 1500) g")
    run(backup_argv(str(conf), type="incr", task_id="task-incr", annotations={}), env)
    # These changes reach the clone only through archived WAL (archive-push + archive-get).
    source.sql("update t set v = 'changed' where i % 7 = 0", "select pg_switch_wal()")
    run(check_argv(str(conf)), env)
    expected = source.sql(CHECKSUM_SQL)
    assert expected.startswith("1500:")
    return expected


def check_catalog(conf: Path, env: dict[str, str], source: Cluster) -> None:
    """info lists the two backups with types, task ids, chain and the cluster's system id."""
    (stanza,) = parse_info(run(info_argv(str(conf)), env).encode())
    assert stanza_problem(stanza) is None
    entries = catalog(stanza, {1: "local"})
    assert [(e.type, e.task_id, e.repository_id) for e in entries] == [
        ("full", "task-full", "local"),
        ("incr", "task-incr", "local"),
    ]
    assert entries[0].annotations == {"controlplane_task_id": "task-full", "why": "it"}
    assert entries[1].prior == entries[0].label
    assert find_by_task(entries, "task-incr") == entries[1]
    controldata = run([str(PG_BIN / "pg_controldata"), "-D", str(source.data)])
    found = re.search(r"Database system identifier:\s+(\d+)", controldata)
    assert found is not None
    assert current_system_id(stanza) == int(found.group(1)) == entries[1].system_id


def test_backup_and_restore_roundtrip(scratch_dir: Path) -> None:
    """Full + incr backups through our config and argv restore into a clone with the same rows."""
    conf, env, source = configure_source(scratch_dir)
    clone = Cluster(scratch_dir / "n2" / "pgdata", free_port(), source.socket_dir)
    try:
        source.start(env)
        expected = take_backups(conf, env, source)
        check_catalog(conf, env, source)

        mkdir_for_os_user(clone.data.parent)
        mkdir_for_os_user(clone.data, mode=0o700)
        argv = restore_argv(str(conf), archive_mode="off", pg_path=str(clone.data), process_max=2)
        run(argv, env)
        clone.start(env)
        eventually(lambda: True if clone.sql("select pg_is_in_recovery()") == "f" else None, 60)
        assert clone.sql(CHECKSUM_SQL) == expected
        assert clone.sql("show archive_mode") == "off"
    finally:
        clone.stop()
        source.stop()
