"""Kept read answers (api/read_cache.py) never hide a committed change, from any writer."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import asyncpg
import httpx

from controlplane.store.changes import APPLICATION_NAME
from tests.support.eventually import eventually
from tests.support.server import ServerProcess

# A stored (public) spec: what the create route keeps, with no secrets.
SPEC = {"database_name": "app", "nodes": [{"name": "n1"}]}


async def _seed(store: asyncpg.Connection) -> uuid.UUID:
    """A database and one finished task of it, written straight into the store: no instance,
    so the monitor has nothing to observe and only the rows below change."""
    await store.execute(
        "INSERT INTO databases (id, state, spec) VALUES ('kept', 'available', $1::jsonb)",
        json.dumps(SPEC),
    )
    task_id = uuid.uuid4()
    await store.execute(
        "INSERT INTO tasks (task_id, database_id, node_name, type, status, started_at,"
        " completed_at, result) VALUES ($1, 'kept', 'n1', 'node_backup', 'completed', now(),"
        " now(), '{\"n\": -1}')",
        task_id,
    )
    return task_id


async def _change_and_read(
    store: asyncpg.Connection, clients: list[httpx.AsyncClient], task_id: uuid.UUID, n: int
) -> None:
    """Warm every kept answer, change the rows underneath, and read them back at once."""
    paths = [
        "/v1/databases",
        "/v1/databases/kept",
        "/v1/databases/kept/tasks",
        f"/v1/databases/kept/tasks/{task_id}",
        "/v1/tasks?scope=database&entity_id=kept",
    ]
    for client in clients:
        for path in paths:
            assert (await client.get(path)).status_code == 200
    await store.execute("UPDATE databases SET error = $1 WHERE id = 'kept'", f"change {n}")
    await store.execute(
        "UPDATE tasks SET result = $1::jsonb WHERE task_id = $2", json.dumps({"n": n}), task_id
    )
    for client in clients:
        listed = (await client.get("/v1/databases")).json()["databases"]
        assert [d["error"] for d in listed] == [f"change {n}"]
        assert (await client.get("/v1/databases/kept")).json()["error"] == f"change {n}"
        for path in paths[2:4]:
            body = (await client.get(path)).json()
            task = body["tasks"][0] if "tasks" in body else body
            assert task["result"] == {"n": n}, (path, body)


async def _listeners(store: asyncpg.Connection) -> list[int]:
    rows = await store.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = $1",
        APPLICATION_NAME,
    )
    return [r["pid"] for r in rows]


async def test_kept_answers_follow_every_change_from_any_writer(
    server: ServerProcess, store_url: str, scratch_dir: Path
) -> None:
    """Two servers share one store; rows change underneath them (as another server's worker
    would change them). Every read made after a change committed shows it, on both servers,
    also while their change notices are cut and after they come back."""
    other = ServerProcess(scratch_dir / "cp2", database_url=store_url)
    other.data_dir.mkdir(parents=True)  # the admin token is in the store: bring its file
    shutil.copy(server.data_dir / "admin-token", other.data_dir / "admin-token")
    other.start()
    store = await asyncpg.connect(store_url)
    try:
        task_id = await _seed(store)
        async with server.client() as first, other.client() as second:
            for n in range(25):
                await _change_and_read(store, [first, second], task_id, n)

            # Cut both servers' change notices: reads go to the store until they are back.
            cut = await _listeners(store)
            assert len(cut) == 2, cut
            await store.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", cut)
            for n in range(25, 35):
                await _change_and_read(store, [first, second], task_id, n)

            async def back() -> bool:
                found = await _listeners(store)
                return len(found) == 2 and not set(found) & set(cut)

            await eventually(back, timeout=30, what="both servers listening again")
            for n in range(35, 50):
                await _change_and_read(store, [first, second], task_id, n)
        assert "lost the store's change notices" in server.log_text()
    finally:
        await store.close()
        other.terminate()
