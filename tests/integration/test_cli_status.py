"""`controlplane status` against a real server: one screen per database, and `--watch` on a
terminal showing a backup started while it runs."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pexpect

from tests.integration.test_cli import cli, cli_env, ok
from tests.support.api import create_and_wait, database_body, wait_task
from tests.support.data import posix, write_rows
from tests.support.eventually import eventually
from tests.support.server import ServerProcess


async def _status(server: ServerProcess, *args: str) -> dict[str, Any]:
    result = ok(await cli(server, "status", *args, "-o", "json"))
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


async def test_status_shows_instances_subscriptions_archiving_backups_and_window(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """After a backup of a two-node database, status names both primaries with their
    timeline, the mesh's subscriptions replicating, archiving healthy, the backup set as each
    node's last one with its recovery window; the human screen shows the same facts."""
    body = database_body("stat", nodes=2, backup_config=posix(scratch_dir / "repo"))
    database = await create_and_wait(api, body)
    await write_rows(database, 1, 100)
    started = await api.post("/v1/databases/stat/nodes/n1/backups", json={"type": "full"})
    task_id = started.json()["task"]["task_id"]
    assert (await wait_task(api, "stat", task_id))["status"] == "completed"
    catalog = (await api.get("/v1/databases/stat/nodes/n1/backups")).json()
    [backup_set] = catalog["backups"]

    async def observed() -> dict[str, Any] | None:
        [db] = (await _status(server, "stat"))["databases"]
        observed = [s for s in db["subscriptions"] if s["lag_bytes"] is not None]
        archivers = [i["archiver"] for i in db["instances"]]
        archived = all(a is not None and a["last_archived_at"] is not None for a in archivers)
        return db if len(observed) == 2 and archived else None

    db = await eventually(observed, timeout=60, what="subscriptions and archiving observed")
    assert db["state"] == "available"
    assert [(i["node_name"], i["role"], i["state"]) for i in db["instances"]] == [
        ("n1", "primary", "available"),
        ("n2", "primary", "available"),
    ]
    assert all(i["timeline"] == 1 for i in db["instances"])
    assert {(s["node_name"], s["provider_node"]) for s in db["subscriptions"]} == {
        ("n1", "n2"),
        ("n2", "n1"),
    }
    known = {"replicating", "initializing", "down", "disabled", "unknown"}
    assert {s["status"] for s in db["subscriptions"]} <= known
    assert all(i["archiver"]["state"] == "ok" for i in db["instances"])
    assert all(i["archiver"]["failed_count"] == 0 for i in db["instances"])
    n1, n2 = db["backups"]
    assert n1["last"]["label"] == backup_set["label"]
    assert n1["last"]["type"] == "full"
    assert n1["last"]["size"] == backup_set["delta"]
    assert n1["sets"] == 1
    assert n1["recovery_window_start"] == catalog["recovery_window"]["earliest"]
    assert n2["configured"] and n2["last"] is None
    assert db["tasks"] == []

    everything = await _status(server)
    assert [d["id"] for d in everything["databases"]] == ["stat"]
    screen = ok(await cli(server, "status stat")).stdout
    assert backup_set["label"] in screen
    assert "cp_sub_n1_to_n2" in screen
    assert "no task running" in screen
    missing = await cli(server, "status nope -o json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error"]["name"] == "not_found"


async def test_watch_redraws_until_interrupted_and_shows_a_backup_started_meanwhile(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """`status --watch` on a terminal shows no task at first, then, in a later frame, the
    backup started meanwhile (its task, then the set as the node's last backup); Ctrl-C ends
    it with exit 0."""
    await create_and_wait(api, database_body("watched", backup_config=posix(scratch_dir / "r")))
    env = cli_env(server) | {"TERM": "xterm", "COLUMNS": "200", "LINES": "60"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "controlplane", "status", "watched", "--watch", "--interval", "0.5"],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(60, 200),
    )
    try:
        await asyncio.to_thread(child.expect, "no task running")
        await asyncio.to_thread(child.expect, "none yet")  # no backup yet
        started = await api.post("/v1/databases/watched/nodes/n1/backups", json={"type": "full"})
        task_id = started.json()["task"]["task_id"]
        await asyncio.to_thread(child.expect, task_id)
        assert (await wait_task(api, "watched", task_id))["status"] == "completed"
        catalog = (await api.get("/v1/databases/watched/nodes/n1/backups")).json()
        label = catalog["backups"][0]["label"]
        await asyncio.to_thread(child.expect, label)
        child.sendintr()
        await asyncio.to_thread(child.expect, pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
