"""Backups through the HTTP API with real pgBackRest: catalog, data checked by restoring."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.api import connect, create_and_wait, database_body, full_log, wait_task
from tests.support.data import CHECKSUM, backup, checksum, posix, write_rows
from tests.support.restore_check import restore_and_query
from tests.support.server import ServerProcess


async def test_posix_full_incr_diff_catalog_and_restored_data(
    api: httpx.AsyncClient, server: ServerProcess, scratch_dir: Path
) -> None:
    """Full, incr and diff backups appear in order linked to their tasks, and each set restores
    to exactly the rows present when it was taken."""
    repo = scratch_dir / "repo"
    body = database_body("bk", backup_config=posix(repo))
    database = await create_and_wait(api, body)
    await write_rows(database, 1, 1000)
    expected = {}
    tasks = {}
    for kind, start in (("full", 1001), ("incr", 2001), ("diff", 3001)):
        tasks[kind] = await backup(api, "bk", "n1", type=kind, annotations={"reason": kind})
        expected[kind] = await checksum(database)
        await write_rows(database, start, 500)
    catalog = (await api.get("/v1/databases/bk/nodes/n1/backups")).json()
    sets = catalog["backups"]
    assert [s["type"] for s in sets] == ["full", "incr", "diff"]
    assert [s["task_id"] for s in sets] == [tasks[k]["task_id"] for k in ("full", "incr", "diff")]
    assert [s["annotations"]["reason"] for s in sets] == ["full", "incr", "diff"]
    assert all(s["repository_id"] == "posix" for s in sets)
    assert sets[0]["stopped_at"] <= sets[1]["started_at"]
    window = catalog["recovery_window"]
    assert window["earliest"] == sets[0]["stopped_at"]
    for kind, entry in zip(("full", "incr", "diff"), sets, strict=True):
        assert tasks[kind]["result"]["label"] == entry["label"]
        config = str(server.data_dir / "instances" / "bk-n1" / "pgbackrest.conf")
        restored = await asyncio.to_thread(
            restore_and_query, config, entry["label"], CHECKSUM, scratch_dir
        )
        assert restored == expected[kind], kind
    messages = [e["message"] for e in await full_log(api, "bk", tasks["full"]["task_id"])]
    assert any("backup start archive" in m or "new backup label" in m for m in messages)


async def test_backup_survives_sigkill_after_backup_step(
    server: ServerProcess, scratch_dir: Path
) -> None:
    """Killed right after the backup step, the resumed task does not take a second backup."""
    server.terminate()
    server.extra_env = {"CONTROLPLANE_CRASH_AFTER_STEP": "node_backup:take_backup"}
    server.start()
    async with server.client() as client:
        database = await create_and_wait(
            client, database_body("crashbk", backup_config=posix(scratch_dir / "repo"))
        )
        await write_rows(database, 1, 200)
        response = await client.post("/v1/databases/crashbk/nodes/n1/backups", json={})
    await server.killed_at_crash_point("crashbk", response.json()["task"]["task_id"], 120)
    server.extra_env = {}
    server.start()
    async with server.client() as client:
        task = await wait_task(client, "crashbk", response.json()["task"]["task_id"])
        assert task["status"] == "completed", task
        sets = (await client.get("/v1/databases/crashbk/nodes/n1/backups")).json()["backups"]
        assert [s["task_id"] for s in sets] == [task["task_id"]]
        assert (await client.get("/v1/databases/crashbk")).json()["state"] == "available"


async def test_backup_survives_sigkill_mid_backup(server: ServerProcess, scratch_dir: Path) -> None:
    """Killed while pgbackrest runs, the resumed task waits for that backup and adopts it (or
    takes one if it failed): exactly one set carries the task id."""
    async with server.client() as client:
        database = await create_and_wait(
            client, database_body("midbk", backup_config=posix(scratch_dir / "repo"))
        )
        await write_rows(database, 1, 20000)
        response = await client.post("/v1/databases/midbk/nodes/n1/backups", json={})
        task_id = response.json()["task"]["task_id"]

        async def backing_up() -> bool:
            task = (await client.get(f"/v1/databases/midbk/tasks/{task_id}")).json()
            return any(
                s["name"] == "take_backup" and s["status"] == "running" for s in task["steps"]
            )

        from tests.support.eventually import eventually

        await eventually(backing_up, interval=0.05, what="the backup to run")
    server.kill()
    server.start()
    async with server.client() as client:
        task = await wait_task(client, "midbk", task_id)
        assert task["status"] == "completed", task
        sets = (await client.get("/v1/databases/midbk/nodes/n1/backups")).json()["backups"]
        assert [s["task_id"] for s in sets].count(task_id) == 1
        config = str(server.data_dir / "instances" / "midbk-n1" / "pgbackrest.conf")
        label = next(s["label"] for s in sets if s["task_id"] == task_id)
        restored = await asyncio.to_thread(
            restore_and_query, config, label, "SELECT count(*) FROM items", scratch_dir
        )
        assert restored == "20000"


async def test_enable_backups_later_needs_no_restart(
    api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """Adding a backup_config by update reloads (archive_command) and backups then work."""
    body = database_body("later")
    database = await create_and_wait(api, body)
    conn = await connect(database, "n1")
    started = await conn.fetchval("SELECT pg_postmaster_start_time()")
    await conn.close()
    body["spec"]["backup_config"] = posix(scratch_dir / "repo")
    response = await api.post("/v1/databases/later", json=body)
    task = await wait_task(api, "later", response.json()["task"]["task_id"])
    assert task["status"] == "completed", task
    conn = await connect(database, "n1")
    try:
        assert await conn.fetchval("SELECT pg_postmaster_start_time()") == started
        assert "archive-push" in await conn.fetchval("SHOW archive_command")
    finally:
        await conn.close()
    await write_rows(database, 1, 10)
    await backup(api, "later", "n1")
    assert len((await api.get("/v1/databases/later/nodes/n1/backups")).json()["backups"]) == 1


async def test_encrypted_repository_keeps_passphrase_secret(
    api: httpx.AsyncClient, server: ServerProcess, scratch_dir: Path
) -> None:
    """cipher: true encrypts the repository; the generated passphrase is in no file we render,
    no response and no log, and the set still restores."""
    database = await create_and_wait(
        api, database_body("enc", backup_config=posix(scratch_dir / "repo", cipher=True))
    )
    await write_rows(database, 1, 300)
    task = await backup(api, "enc", "n1")
    config = server.data_dir / "instances" / "enc-n1" / "pgbackrest.conf"
    text = config.read_text()
    assert "repo1-cipher-type=aes-256-cbc" in text
    assert "cipher-pass" not in text
    env_file = server.data_dir / "instances" / "enc-n1" / "postmaster.env"
    passphrase = server.instance_env("enc-n1")["PGBACKREST_REPO1_CIPHER_PASS"]
    assert env_file.stat().st_mode & 0o777 == 0o600
    instance_files = (server.data_dir / "instances" / "enc-n1").glob("*")
    assert not [p for p in instance_files if p.is_file() and passphrase in p.read_text("latin-1")]
    logs = [str(e) for e in await full_log(api, "enc", task["task_id"])]
    assert not [line for line in logs if passphrase in line]
    assert passphrase not in server.log_text()
    assert passphrase not in (await api.get("/v1/databases/enc")).text
    env = {**os.environ, "PGBACKREST_REPO1_CIPHER_PASS": passphrase}
    try:
        restored = await asyncio.to_thread(
            restore_and_query,
            str(config),
            task["result"]["label"],
            "SELECT count(*) FROM items",
            scratch_dir,
            env=env,
        )
    except subprocess.CalledProcessError as exc:
        raise AssertionError(exc.output) from exc
    assert restored == "300"
    with pytest.raises(subprocess.CalledProcessError):
        await asyncio.to_thread(
            restore_and_query,
            str(config),
            task["result"]["label"],
            "SELECT count(*) FROM items",
            scratch_dir,
        )
