"""Databases through the HTTP API against real Postgres 15: create, get, list, update, delete."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.api import connect, create_and_wait, database_body, full_log, wait_task
from tests.support.server import ServerProcess

CANARY = "canary-Pw-7f3a9c21"


async def test_create_two_node_database_accepts_logins_with_spec_credentials(
    api: httpx.AsyncClient,
) -> None:
    """A 2-node create yields two running instances where the spec's user can log in and write."""
    database = await create_and_wait(api, database_body("shop", nodes=2))
    assert database["state"] == "available"
    assert sorted(i["node_name"] for i in database["instances"]) == ["n1", "n2"]
    ports = {i["connection_info"]["port"] for i in database["instances"]}
    assert len(ports) == 2
    for node in ("n1", "n2"):
        conn = await connect(database, node)
        try:
            await conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
            await conn.execute("INSERT INTO items SELECT generate_series(1, 50)")
            assert await conn.fetchval("SELECT count(*) FROM items") == 50
            assert await conn.fetchval("SELECT current_database()") == "app"
            owner = await conn.fetchval(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'"
            )
            assert owner == "admin"
        finally:
            await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await connect(database, "n1", password="wrong")


async def test_create_task_log_shows_every_step(api: httpx.AsyncClient) -> None:
    """The create task records each step as completed and logs its start and finish."""
    response = await api.post("/v1/databases", json=database_body("logs"))
    task_id = response.json()["task"]["task_id"]
    task = await wait_task(api, "logs", task_id)
    assert task["status"] == "completed"
    assert [s["status"] for s in task["steps"]] == ["completed"] * len(task["steps"])
    messages = [e["message"] for e in await full_log(api, "logs", task_id)]
    for step in task["steps"]:
        assert f"step {step['name']} started" in messages
        assert any(m.startswith(f"step {step['name']} completed") for m in messages)
    assert messages[-1] == "task completed"


async def test_list_get_and_delete(api: httpx.AsyncClient, server: ServerProcess) -> None:
    """Delete stops and removes every instance, then the database is gone from get and list."""
    database = await create_and_wait(api, database_body("gone", nodes=2))
    listed = (await api.get("/v1/databases")).json()["databases"]
    assert [d["id"] for d in listed] == ["gone"]
    response = await api.delete("/v1/databases/gone")
    assert response.status_code == 202
    task = await wait_task(api, "gone", response.json()["task"]["task_id"])
    assert task["status"] == "completed"
    assert (await api.get("/v1/databases/gone")).status_code == 404
    assert (await api.get("/v1/databases")).json()["databases"] == []
    assert not list((server.data_dir / "instances").glob("gone-*"))
    with pytest.raises(OSError):
        await connect(database, "n1")
    history = (await api.get("/v1/tasks", params={"sort_order": "asc"})).json()["tasks"]
    assert [t["type"] for t in history] == ["create", "delete"]


async def test_update_applies_postgresql_conf_and_keeps_omitted_password(
    api: httpx.AsyncClient,
) -> None:
    """An update changes settings on every node (restarting for restart-only ones) and a
    password omitted from the new spec keeps working."""
    body = database_body("conf", nodes=2)
    await create_and_wait(api, body)
    body["spec"]["postgresql_conf"] = {"work_mem": "8MB", "max_connections": 150}
    del body["spec"]["database_users"][0]["password"]
    response = await api.post("/v1/databases/conf", json=body)
    assert response.status_code == 202, response.text
    task = await wait_task(api, "conf", response.json()["task"]["task_id"])
    assert task["status"] == "completed", task["error"]
    database = (await api.get("/v1/databases/conf")).json()
    assert database["state"] == "available"
    assert database["spec"]["postgresql_conf"] == {"work_mem": "8MB", "max_connections": 150}
    for node in ("n1", "n2"):
        conn = await connect(database, node)
        try:
            assert await conn.fetchval("SHOW work_mem") == "8MB"
            assert await conn.fetchval("SHOW max_connections") == "150"
        finally:
            await conn.close()


async def test_update_adds_and_removes_nodes(api: httpx.AsyncClient) -> None:
    """Adding n3 and dropping n1 leaves exactly n2 and n3 running."""
    body = database_body("grow", nodes=2)
    first = await create_and_wait(api, body)
    body["spec"]["nodes"] = [{"name": "n2"}, {"name": "n3"}]
    response = await api.post("/v1/databases/grow", json=body)
    task = await wait_task(api, "grow", response.json()["task"]["task_id"])
    assert task["status"] == "completed", task["error"]
    database = (await api.get("/v1/databases/grow")).json()
    assert sorted(i["node_name"] for i in database["instances"]) == ["n2", "n3"]
    for node in ("n2", "n3"):
        conn = await connect(database, node)
        await conn.close()
    with pytest.raises(OSError):
        await connect(first, "n1")


async def test_immutable_fields_refused(api: httpx.AsyncClient) -> None:
    """database_name cannot change after create: 422 with its path and nothing changes."""
    body = database_body("fixed")
    await create_and_wait(api, body)
    body["spec"]["database_name"] = "other"
    response = await api.post("/v1/databases/fixed", json=body)
    assert response.status_code == 422
    assert [e["path"] for e in response.json()["details"]["errors"]] == ["spec.database_name"]
    assert (await api.get("/v1/databases/fixed")).json()["spec"]["database_name"] == "app"
    tasks = (await api.get("/v1/databases/fixed/tasks")).json()["tasks"]
    assert [t["type"] for t in tasks] == ["create"]


async def test_restart_keeps_specs_and_tasks(api: httpx.AsyncClient, server: ServerProcess) -> None:
    """After the server restarts, databases, tasks and logs are still there and usable."""
    database = await create_and_wait(api, database_body("kept"))
    before = (await api.get("/v1/databases/kept/tasks")).json()["tasks"]
    server.restart()
    async with server.client() as again:
        after = (await again.get("/v1/databases/kept/tasks")).json()["tasks"]
        assert [t["task_id"] for t in after] == [t["task_id"] for t in before]
        assert (await again.get("/v1/databases/kept")).json()["state"] == "available"
        assert await full_log(again, "kept", before[0]["task_id"])
    conn = await connect(database, "n1")
    await conn.close()


async def test_auth_required(server: ServerProcess) -> None:
    """Every route but version and health needs a valid bearer token."""
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        assert (await anonymous.get("/v1/version")).status_code == 200
        assert (await anonymous.get("/health")).status_code == 200
        for method, path in [
            ("GET", "/v1/databases"),
            ("POST", "/v1/databases"),
            ("GET", "/v1/tasks"),
            ("GET", "/v1/hosts"),
            ("DELETE", "/v1/databases/x"),
        ]:
            response = await anonymous.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.json()["name"] == "unauthorized"
        bad = await anonymous.get("/v1/databases", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401


async def test_read_token_cannot_mutate(server: ServerProcess) -> None:
    """A read-scoped token lists but cannot create (403 forbidden), and creates nothing."""
    token = await asyncio.to_thread(server.create_token, "viewer", "read")
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}
    ) as viewer:
        assert (await viewer.get("/v1/databases")).status_code == 200
        response = await viewer.post("/v1/databases", json=database_body("nope"))
        assert response.status_code == 403
        assert response.json()["name"] == "forbidden"
        assert (await viewer.get("/v1/databases")).json()["databases"] == []


async def test_secrets_never_returned_or_logged(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    """A canary password appears in no response, task log, server log or instance log."""
    created = await api.post("/v1/databases", json=database_body("canary", password=CANARY))
    assert CANARY not in created.text
    task_id = created.json()["task"]["task_id"]
    await wait_task(api, "canary", task_id)
    body = database_body("canary", password=CANARY + "-2")
    updated = await api.post("/v1/databases/canary", json=body)
    await wait_task(api, "canary", updated.json()["task"]["task_id"])
    texts = [created.text, updated.text]
    for path in (
        "/v1/databases",
        "/v1/databases/canary",
        "/v1/tasks",
        f"/v1/databases/canary/tasks/{task_id}",
    ):
        texts.append((await api.get(path)).text)
    for task in (await api.get("/v1/tasks")).json()["tasks"]:
        texts += [str(e) for e in await full_log(api, "canary", task["task_id"])]
    texts.append(server.log_text())
    for log in server.data_dir.rglob("*.log"):
        texts.append(log.read_text(errors="replace"))
    assert not [t for t in texts if CANARY in t]
    database = (await api.get("/v1/databases/canary")).json()
    conn = await connect(database, "n1", password=CANARY + "-2")
    await conn.close()
    store = await asyncpg.connect(server.database_url)
    try:
        dumped = await store.fetchval(
            "SELECT string_agg(spec::text || coalesce(secrets, ''), '') FROM databases"
        )
    finally:
        await store.close()
    assert CANARY not in dumped


async def test_unknown_routes_and_malformed_bodies(api: httpx.AsyncClient) -> None:
    """Unknown ids are 404 not_found, non-JSON bodies 400, and neither creates anything."""
    assert (await api.get("/v1/databases/nope")).json()["name"] == "not_found"
    assert (await api.get("/v1/databases/nope/tasks/abc")).status_code == 404
    assert (await api.get("/v1/nothing")).status_code == 404
    response = await api.post("/v1/databases", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["name"] == "malformed_request"
    response = await api.post("/v1/databases", content=b"[]")
    assert response.status_code == 400
    assert (await api.get("/v1/tasks", params={"limit": "x"})).status_code == 422
    assert (await api.get("/v1/databases")).json()["databases"] == []


async def test_duplicate_id_conflicts(api: httpx.AsyncClient) -> None:
    """Creating an id that exists is 409 database_already_exists."""
    await create_and_wait(api, database_body("twice"))
    response = await api.post("/v1/databases", json=database_body("twice"))
    assert response.status_code == 409
    assert response.json()["name"] == "database_already_exists"


def test_data_dir_files_are_private(server: ServerProcess) -> None:
    """The admin token and the secret key are readable by their owner only."""
    for name in ("admin-token", "secret.key"):
        assert os.stat(Path(server.data_dir) / name).st_mode & 0o777 == 0o600
