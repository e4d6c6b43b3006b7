"""Database health against a real server: failing WAL archiving and a disabled subscription turn
the database `degraded` with a reason after the grace, in the API, `/metrics` and `controlplane
status`; fixed, it turns `available` again. A degraded database still takes backups."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_cli import cli, ok
from tests.integration.test_metrics import instance_of, scrape, superuser_query, switch_wal
from tests.support.api import create_and_wait, database_body
from tests.support.data import TABLE, backup, converged, on_every, posix, write, write_rows
from tests.support.eventually import eventually
from tests.support.server import ServerProcess, serving

GRACE = 5.0
DEGRADED = "controlplane_database_degraded"


@pytest.fixture
def server(scratch_dir: Path, store_url: str) -> Iterator[ServerProcess]:
    """A running server whose monitor degrades a database after a short grace."""
    env = {"CONTROLPLANE_HEALTH_GRACE": f"{GRACE:g}"}
    with serving(scratch_dir / "cp", database_url=store_url, env=env) as proc:
        yield proc


async def view(api: httpx.AsyncClient, database_id: str) -> dict[str, Any]:
    response = await api.get(f"/v1/databases/{database_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def state_becomes(
    api: httpx.AsyncClient, database_id: str, state: str, timeout: float = 90
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        found = await view(api, database_id)
        return found if found["state"] == state else None

    result: dict[str, Any] = await eventually(
        probe, timeout=timeout, what=f"{database_id} to be {state}"
    )
    return result


def at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


async def degraded_metric(server: ServerProcess, database_id: str) -> float:
    _, samples = await scrape(server)
    return samples[(DEGRADED, (("database", database_id),))]


async def test_failing_archiving_degrades_the_database_until_it_archives_again(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """With its posix repository unwritable, the node's archiving fails: the database stays
    available through the grace, then turns degraded naming the node, the waiting WAL and
    pgBackRest's error (API, metric, status screen); writable again, it archives its backlog
    and turns available."""
    repo = scratch_dir / "repo"
    database = await create_and_wait(api, database_body("arch", backup_config=posix(repo)))
    await switch_wal(server, database, 1)

    async def archived() -> dict[str, Any] | None:
        found = await view(api, "arch")
        archiver = instance_of(found, "n1")["archiver"]
        return found if archiver and archiver["archived_count"] > 0 else None

    await eventually(archived, timeout=60, what="a segment archived")
    assert await degraded_metric(server, "arch") == 0

    mode = repo.stat().st_mode & 0o7777
    repo.chmod(0o000)  # pgBackRest runs as the postgres OS user: it can no longer enter it
    try:
        await switch_wal(server, database, 100)

        async def failing() -> dict[str, Any] | None:
            found = await view(api, "arch")
            a = instance_of(found, "n1")["archiver"]
            failed, done = a["last_failed_at"], a["last_archived_at"]
            late = failed and (not done or at(failed) > at(done))
            return found if late and a["ready_files"] > 0 else None

        first = await eventually(failing, timeout=90, interval=0.2, what="archiving to fail")
        seen_failing = time.monotonic()
        # The same answer that first shows the failure: the grace has not passed yet.
        assert first["state"] == "available" and first.get("error") is None
        degraded = await state_becomes(api, "arch", "degraded")
        assert time.monotonic() - seen_failing >= GRACE - 1.5
        archiver = instance_of(degraded, "n1")["archiver"]
        error = degraded["error"]
        assert error.startswith(f"n1: archiving is failing: {archiver['last_failed_wal']} (")
        assert "Permission denied" in error or "permission denied" in error, error
        assert await degraded_metric(server, "arch") == 1
        screen = ok(await cli(server, "status", "arch")).stdout
        assert f"degraded: {error}" in " ".join(screen.split()), screen
    finally:
        repo.chmod(mode)

    await switch_wal(server, database, 200)
    healed = await state_becomes(api, "arch", "available")
    assert healed.get("error") is None
    archiver = instance_of(healed, "n1")["archiver"]
    assert at(archiver["last_archived_at"]) > at(archiver["last_failed_at"])
    assert await degraded_metric(server, "arch") == 0
    assert "degraded:" not in ok(await cli(server, "status", "arch")).stdout


async def test_a_disabled_subscription_degrades_the_database_until_enabled(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """A subscription of n1 disabled by hand turns the two-node database degraded naming it;
    a backup still runs meanwhile; enabled again, the database turns available and n2's writes
    made meanwhile reach n1."""
    body = database_body("subs", nodes=2, backup_config=posix(scratch_dir / "repo"))
    database = await create_and_wait(api, body)
    # The table on both nodes first (DDL does not replicate): a row arriving before its table
    # would stop the apply worker, a real outage of its own.
    await on_every(database, TABLE)
    await write_rows(database, 1, 10)
    await write_rows(database, 11, 10, node="n2")
    await converged(database, 20)

    async def replicating() -> dict[str, Any] | None:
        found = await view(api, "subs")
        subs = instance_of(found, "n1")["subscriptions"]
        return found if subs and all(s["status"] == "replicating" for s in subs) else None

    found = await eventually(replicating, timeout=60, what="n1's subscription replicating")
    [subscription] = instance_of(found, "n1")["subscriptions"]
    name = subscription["name"]
    assert subscription["provider_node"] == "n2"
    n1 = instance_of(database, "n1")
    await superuser_query(
        server, n1, f"SELECT pglogical.alter_subscription_disable('{name}', true)"
    )

    degraded = await state_becomes(api, "subs", "degraded")
    assert degraded["error"] == f"n1: subscription {name} is down (disabled)"
    assert await degraded_metric(server, "subs") == 1
    # Writes on n2 while n1 does not apply them.
    await write(database, "n2", range(21, 31))

    # Degraded does not stand in the way of a backup.
    task = await backup(api, "subs", "n1")
    assert task["result"]["label"]
    assert (await view(api, "subs"))["state"] == "degraded"

    # The health view says the same in one answer, with each node's backups and the span a
    # restore of it reaches.
    answer = await api.get("/v1/databases/subs/health")
    assert answer.status_code == 200, answer.text
    health = answer.json()
    assert (health["state"], health["error"]) == ("degraded", degraded["error"])
    nodes = {n["node_name"]: n for n in health["nodes"]}
    assert sorted(nodes) == ["n1", "n2"]
    n1_health, n2_health = nodes["n1"], nodes["n2"]
    assert n1_health["primary_instance_id"] == n1["id"]
    assert [(s["name"], s["status"]) for s in n1_health["subscriptions"]] == [(name, "disabled")]
    [full] = n1_health["backups"]
    stopped = at(task["result"]["stopped_at"])
    assert full["type"] == "full" and at(full["last_success_at"]) == stopped, full
    assert full.get("last_failure_at") is None
    window = n1_health["recovery_window"]
    assert at(window["earliest"]) == stopped and at(window["latest"]) >= stopped, window
    assert n1_health["archiver"]["archived_count"] > 0
    # n2 has a backup configuration and no backup yet: its full backup shows none, and it has
    # no window.
    assert n2_health["backups"] == [{"type": "full"}] or n2_health["backups"] == [
        {"type": "full", "last_success_at": None, "last_failure_at": None}
    ], n2_health["backups"]
    assert n2_health.get("recovery_window") is None
    missing = await api.get("/v1/databases/nothere/health")
    assert missing.status_code == 404, missing.text

    await superuser_query(server, n1, f"SELECT pglogical.alter_subscription_enable('{name}', true)")
    healed = await state_becomes(api, "subs", "available")
    assert healed.get("error") is None
    assert await degraded_metric(server, "subs") == 0
    await converged(database, 30)
