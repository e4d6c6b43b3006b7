"""Named restore points made through the API, and name and xid restore targets checked against
them and against the live source before anything is touched."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from tests.support.api import connect, create_and_wait, database_body, full_log
from tests.support.data import (
    TABLE,
    backup,
    digest,
    on_every,
    posix,
    posix_repository,
    query,
    restore,
    restore_config,
    write,
)
from tests.support.deployment import Deployment
from tests.support.eventually import eventually

POINTS = "/v1/databases/{}/nodes/n1/restore-points"


def expected_digest(ids: Iterable[int]) -> str:
    """What DIGEST returns for exactly these rows of `write` (v = md5 of the id)."""
    ordered = sorted(ids)
    text = ",".join(f"{i}{hashlib.md5(str(i).encode()).hexdigest()}" for i in ordered)
    return f"{len(ordered)}:{hashlib.md5(text.encode()).hexdigest()}"


async def _refused(api: httpx.AsyncClient, database_id: str, config: dict[str, Any]) -> str:
    """POST the restore, expect 422 on the target; the message."""
    response = await api.post(
        f"/v1/databases/{database_id}/restore", json={"restore_config": config}
    )
    assert response.status_code == 422, response.text
    errors = response.json()["details"]["errors"]
    assert [e["path"] for e in errors] == ["restore_config.restore_options.target"]
    return str(errors[0]["message"])


async def _written_while(database: dict[str, Any], action: Any) -> tuple[Any, list[int], int, int]:
    """Run `action` while a writer commits one row per transaction on n1 (ids from 1001);
    its result, the ids committed, and how many were committed before and after it."""
    written: list[int] = []
    stop = asyncio.Event()

    async def writer() -> None:
        conn = await connect(database, "n1")
        try:
            while not stop.is_set():
                row = 1001 + len(written)
                await conn.execute("INSERT INTO items VALUES ($1::int, md5($1::text))", row)
                written.append(row)
        finally:
            await conn.close()

    async def rows(count: int) -> bool:
        return len(written) >= count

    task = asyncio.create_task(writer())
    await eventually(lambda: rows(50), what="the writer to start")
    before = len(written)
    result = await action()
    after = len(written)
    await eventually(lambda: rows(after + 50), what="rows after the action")
    stop.set()
    await task
    return result, written, before, after


async def _past_backup_end(api: httpx.AsyncClient, database: dict[str, Any]) -> None:
    """Wait until the node's clock is over a second past the newest set's reported stop (which
    pgBackRest truncates to the second): a commit from then on is after the set's end."""
    catalog = (await api.get(f"/v1/databases/{database['id']}/nodes/n1/backups")).json()
    stopped = catalog["backups"][-1]["stopped_at"]

    async def past() -> bool:
        sql = f"SELECT clock_timestamp() > '{stopped}'::timestamptz + interval '1.5 s'"
        return bool(await query(database, "n1", sql))

    await eventually(past, what="a second past the backup's end")


async def test_restore_point_made_while_writing_restores_exactly(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """A restore point made while rows are written is recorded with its LSN and actor, shows in
    the catalog, and a name restore in place brings back exactly the rows committed before it;
    an unknown name is 422 before the node is touched."""
    database = await create_and_wait(api, database_body("rpname", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    await backup(api, "rpname")

    async def create() -> httpx.Response:
        return await api.post(POINTS.format("rpname"), json={"name": "before-batch"})

    response, written, before, after = await _written_while(database, create)
    assert response.status_code == 201, response.text
    point = response.json()
    assert point["name"] == "before-batch"
    assert point["timeline"] == 1
    await write(database, "n1", range(5001, 5051))
    everything = await digest(database)
    assert everything == expected_digest([*range(1, 101), *written, *range(5001, 5051)])

    again = await api.post(POINTS.format("rpname"), json={"name": "before-batch"})
    assert again.status_code == 409, again.text
    assert again.json()["name"] == "restore_point_already_exists"
    bad = await api.post(POINTS.format("rpname"), json={"name": "no spaces"})
    assert bad.status_code == 422
    assert [e["path"] for e in bad.json()["details"]["errors"]] == ["name"]
    listed = (await api.get(POINTS.format("rpname"))).json()["restore_points"]
    catalog = (await api.get("/v1/databases/rpname/nodes/n1/backups")).json()
    assert listed == catalog["restore_points"] == [point]

    repository = posix_repository(repo_dir)
    started = await query(database, "n1", "SELECT pg_postmaster_start_time()")
    unknown = restore_config("rpname", "n1", repository, type="name", target="no-such-point")
    message = await _refused(api, "rpname", unknown)
    assert "/v1/databases/rpname/nodes/n1/restore-points" in message
    assert await query(database, "n1", "SELECT pg_postmaster_start_time()") == started
    assert await digest(database) == everything
    tasks = (await api.get("/v1/databases/rpname/tasks", params={"type": "restore"})).json()
    assert tasks["tasks"] == []

    config = restore_config("rpname", "n1", repository, type="name", target="before-batch")
    result = await restore(api, "rpname", {"restore_config": config})
    assert point["created_by"] == result["task"]["actor"]
    count = int((await digest(database)).split(":")[0]) - 100
    # One writer commits in order: the restore point falls after a prefix of its rows, at
    # least those committed before the request and at most one still in flight when it ended.
    assert before <= count <= after + 1, (before, count, after)
    restored = [*range(1, 101), *written[:count]]
    assert await digest(database) == expected_digest(restored)
    node_log = await full_log(api, "rpname", result["node_tasks"][0]["task_id"])
    assert any("--target-timeline=1" in e["message"] for e in node_log)


async def test_restore_points_on_either_side_of_an_earlier_restore(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """After a restore, a restore point on the timeline it started and one on the timeline it
    abandoned are both restored exactly (recovery follows the point's own timeline)."""
    database = await create_and_wait(api, database_body("rptl", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await backup(api, "rptl")
    repository = posix_repository(repo_dir)

    async def point_after(ids: range, name: str, timeline: int) -> dict[str, Any]:
        await write(database, "n1", ids)
        response = await api.post(POINTS.format("rptl"), json={"name": name})
        assert response.status_code == 201, response.text
        assert response.json()["timeline"] == timeline
        config = restore_config("rptl", "n1", repository, type="name", target=name)
        return {"restore_config": config}

    first = await point_after(range(1, 51), "first", 1)
    second = await point_after(range(51, 101), "second", 1)
    await restore(api, "rptl", first)
    assert await digest(database) == expected_digest(range(1, 51))
    third = await point_after(range(201, 211), "third", 2)
    await write(database, "n1", range(301, 311))
    await restore(api, "rptl", third)
    assert await digest(database) == expected_digest([*range(1, 51), *range(201, 211)])
    # "second" lies on timeline 1 after the point timeline 2 forked from: following the latest
    # timeline would never reach it.
    await restore(api, "rptl", second)
    assert await digest(database) == expected_digest(range(1, 101))


async def test_xid_target_restores_through_its_commit(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """An xid target restores exactly the rows up to and including that transaction; an xid
    that rolled back or has not happened yet is 422 before the node is touched."""
    database = await create_and_wait(api, database_body("rpxid", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    await backup(api, "rpxid")
    await _past_backup_end(api, database)
    conn = await connect(database, "n1")
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(101, 150) g"
            )
            committed = await conn.fetchval("SELECT pg_current_xact_id()::xid::text")
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO items VALUES (9999, 'never')")
        rolled_back = await conn.fetchval("SELECT pg_current_xact_id()::xid::text")
        await tx.rollback()
        upcoming = await conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
    finally:
        await conn.close()
    expected = await digest(database)
    assert expected == expected_digest(range(1, 151))
    await write(database, "n1", range(151, 201))

    repository = posix_repository(repo_dir)
    started = await query(database, "n1", "SELECT pg_postmaster_start_time()")
    for xid, words in ((rolled_back, "rolled back"), (str(int(upcoming) + 1000), "not happened")):
        config = restore_config("rpxid", "n1", repository, type="xid", target=xid)
        assert words in await _refused(api, "rpxid", config)
    assert await query(database, "n1", "SELECT pg_postmaster_start_time()") == started
    assert await digest(database) == expected_digest(range(1, 201))

    config = restore_config("rpxid", "n1", repository, type="xid", target=committed)
    await restore(api, "rpxid", {"restore_config": config})
    assert await digest(database) == expected


async def test_restore_points_need_backups_and_write_scope(
    api: httpx.AsyncClient, deployment: Deployment
) -> None:
    """A node without a backup_config cannot take a restore point (422 saying to configure
    backups); a read token may list but not create them."""
    await create_and_wait(api, database_body("rpnobackup"))
    response = await api.post(POINTS.format("rpnobackup"), json={"name": "p1"})
    assert response.status_code == 422, response.text
    assert "configure backups first" in response.json()["message"]
    assert (await api.get(POINTS.format("rpnobackup"))).json() == {"restore_points": []}
    server = deployment.server
    reader = await asyncio.to_thread(server.create_token, "rp-reader", "read")
    headers = {"Authorization": f"Bearer {reader}"}
    denied = await api.post(POINTS.format("rpnobackup"), json={"name": "p1"}, headers=headers)
    assert denied.status_code == 403
    writer = await asyncio.to_thread(server.create_token, "rp-writer", "write")
    headers = {"Authorization": f"Bearer {writer}"}
    allowed = await api.post(POINTS.format("rpnobackup"), json={"name": "p1"}, headers=headers)
    assert allowed.status_code == 422  # past the scope check, refused for want of backups
    listed = await api.get(POINTS.format("rpnobackup"), headers=headers)
    assert listed.status_code == 200
    missing = await api.get("/v1/databases/rpnobackup/nodes/n9/restore-points")
    assert missing.status_code == 404
