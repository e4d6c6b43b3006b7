"""A database moved over from pgEdge Control Plane: its backup, in the repository layout and
stanza pgEdge's renderer gives it, is what a new database here is created from."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import create_and_wait, database_body
from tests.support.data import backup, query
from tests.support.os_user import as_os_user, give_to_os_user, run_as_os_user
from tests.support.pgcluster import PG_BIN, free_port

# As pgEdge names things: a database id, a repository id (a UUID, 36 characters), node n1.
SOURCE_DATABASE = "storefront"
REPOSITORY_ID = "0c28ad6e-233b-4ca7-ae60-4214e3a5356d"


def pgedge_config(repo_path: Path, data: Path, root: Path, port: int) -> str:
    """pgBackRest's config as pgEdge's `pgbackrest.WriteConfig` renders it (its keys, its
    `[db]` stanza), with this machine's paths and no pgedge OS user."""
    return (
        "[global]\n"
        f"lock-path = {root / 'lock'}\n"
        "log-level-console = info\n"
        "log-level-file = off\n"
        "repo1-cipher-type = none\n"
        f"repo1-path = {repo_path}\n"
        "repo1-retention-full = 7\n"
        "repo1-retention-full-type = time\n"
        "repo1-type = posix\n"
        "start-fast = y\n"
        "\n[db]\n"
        f"pg1-path = {data}\n"
        f"pg1-port = {port}\n"
        f"pg1-socket-path = {root}\n"
        "pg1-user = postgres\n"
    )


@contextlib.contextmanager
def pgedge_node(root: Path, repo_path: Path) -> Iterator[Path]:
    """A Postgres 15 node archiving into `repo_path` through pgEdge's config; yields the
    config's path and stops the node afterwards."""
    data, port, config = root / "data", free_port(), root / "pgbackrest.conf"
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
    subprocess.run(as_os_user(initdb), check=True, capture_output=True)
    config.write_text(pgedge_config(repo_path, data, root, port))
    give_to_os_user(config)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"listen_addresses = ''\nunix_socket_directories = '{root}'\nport = {port}\n"
            "wal_level = replica\narchive_mode = on\n"
            f"archive_command = 'pgbackrest --config={config} --stanza=db archive-push %p'\n"
        )
    log = root / "postgres.log"
    ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w"]
    subprocess.run(as_os_user([*ctl, "start"]), check=True, capture_output=True)
    try:
        yield config
    finally:
        subprocess.run(as_os_user([*ctl, "stop", "-m", "fast"]), check=False, capture_output=True)


def psql(root: Path, sql: str, database: str = "postgres") -> str:
    port = next(p.name.split(".")[-1] for p in root.glob(".s.PGSQL.*") if p.is_socket())
    argv = [str(PG_BIN / "psql"), "-h", str(root), "-p", port, "-U", "postgres", "-d", database]
    return run_as_os_user([*argv, "-Atqc", sql]).stdout.strip()


def pgbackrest(config: Path, *args: str) -> None:
    run_as_os_user(["pgbackrest", f"--config={config}", "--stanza=db", *args])


@pytest.mark.slow
@pytest.mark.parametrize("repository_id", [REPOSITORY_ID, None], ids=["with-id", "without-id"])
async def test_create_database_from_a_pgedge_backup(
    api: httpx.AsyncClient, scratch_dir: Path, repository_id: str | None
) -> None:
    """A full backup pgEdge's config took of node n1 (in `<base>/databases/<db>/[<id>/]n1`,
    stanza db) becomes a new database here, with every row, its database renamed to the new
    spec's name, and backups of its own."""
    base = scratch_dir / "pgedge-backups"
    repo_path = base / "databases" / SOURCE_DATABASE
    repo_path = (repo_path / repository_id if repository_id else repo_path) / "n1"
    root = scratch_dir / "pg"
    root.mkdir()
    repo_path.mkdir(parents=True)
    for directory in (root, base, *base.rglob("*")):
        give_to_os_user(directory)
    with pgedge_node(root, repo_path) as config:
        # As pgEdge makes it: the database's owner user owns the database and its tables.
        psql(root, "CREATE ROLE admin LOGIN")
        psql(root, "CREATE DATABASE shop OWNER admin")
        psql(
            root,
            "SET ROLE admin; CREATE TABLE orders (id int PRIMARY KEY, total numeric NOT NULL);"
            " INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 500) g",
            "shop",
        )
        pgbackrest(config, "stanza-create")
        pgbackrest(config, "backup", "--type=full")
    assert (repo_path / "backup" / "db" / "backup.info").exists()

    repository = {"type": "posix", "base_path": str(base)}
    if repository_id:
        repository["id"] = repository_id
    restore_config = {
        "source_database_id": SOURCE_DATABASE,
        "source_node_name": "n1",
        "source_database_name": "shop",
        "repository": repository,
    }
    own = {"repositories": [{"type": "posix", "base_path": str(scratch_dir / "ours")}]}
    database = await create_and_wait(
        api, database_body("moved", restore_config=restore_config, backup_config=own)
    )
    assert await query(database, "n1", "SELECT count(*) FROM orders") == 500
    assert await query(database, "n1", "SELECT sum(total) FROM orders") == 187875.0
    tasks = (await api.get("/v1/databases/moved/tasks", params={"type": "create"})).json()
    log = (await api.get(f"/v1/databases/moved/tasks/{tasks['tasks'][0]['task_id']}/log")).json()
    assert any(f"of node n1 of {SOURCE_DATABASE}" in e["message"] for e in log["entries"])
    done = await backup(api, "moved", "n1")
    assert done["status"] == "completed", done
