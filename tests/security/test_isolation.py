"""What a tenant's request may not reach: privileged roles, paths outside the backup roots,
the state store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.api import create_and_wait, database_body, wait_task
from tests.support.server import ServerProcess


def _user(*attributes: str) -> dict[str, object]:
    return {"username": "ops", "password": "ops-pass-1", "attributes": ["LOGIN", *attributes]}


async def test_privileged_attributes_need_admin_and_os_level_ones_are_refused_on_local(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    """REPLICATION and BYPASSRLS need an admin token (a write token gets 403 and nothing
    changes); SUPERUSER and CREATEROLE, which reach the shared OS user on the local
    orchestrator, are refused there with 422 whatever the token; a write token may keep an
    attribute an admin granted."""
    write = server.create_token("tenant", "write")
    body = database_body("iso")
    async with server.client(timeout=30, token=write) as tenant:
        for attributes in (["REPLICATION"], ["BYPASSRLS"]):
            body["spec"]["database_users"].append(_user(*attributes))
            response = await tenant.post("/v1/databases", json=body)
            assert response.status_code == 403, response.text
            assert response.json()["details"]["required_scope"] == "admin"
            body["spec"]["database_users"].pop()
        assert (await tenant.get("/v1/databases/iso")).status_code == 404
        for attribute in ("SUPERUSER", "CREATEROLE"):
            body["spec"]["database_users"].append(_user(attribute))
            for client in (tenant, api):
                response = await client.post("/v1/databases", json=body)
                assert response.status_code == 422, response.text
                error = response.json()["details"]["errors"][0]
                assert error["path"] == "spec.database_users[1].attributes[1]"
                assert "local orchestrator" in error["message"]
            body["spec"]["database_users"].pop()

        body["spec"]["database_users"].append(_user("REPLICATION"))
        database = await create_and_wait(api, body)  # an admin grants it
        assert database["state"] == "available"
        body["spec"]["postgresql_conf"] = {"work_mem": "8MB"}
        response = await tenant.post("/v1/databases/iso", json=body)  # kept, not granted
        assert response.status_code == 202, response.text
        task = await wait_task(tenant, "iso", response.json()["task"]["task_id"])
        assert task["status"] == "completed", task["error"]
        body["spec"]["database_users"][1]["attributes"].append("BYPASSRLS")
        response = await tenant.post("/v1/databases/iso", json=body)
        assert response.status_code == 403, response.text


async def test_posix_repositories_only_inside_the_backup_roots(
    api: httpx.AsyncClient, server: ServerProcess, scratch_dir: Path
) -> None:
    """A posix base_path outside CONTROLPLANE_BACKUP_ROOTS, or inside the control plane's data
    directory, is refused with 422 on its path for backup and restore configs alike, and no
    directory is made there."""
    outside = "/opt/elsewhere-backups"
    inside = str(server.data_dir / "backups")
    for base, node_level in ((outside, False), (inside, False), (outside, True)):
        repository = {"type": "posix", "base_path": base}
        body = database_body("roots")
        if node_level:
            body["spec"]["nodes"][0]["backup_config"] = {"repositories": [repository]}
            path = "spec.nodes[0].backup_config.repositories[0].base_path"
        else:
            body["spec"]["backup_config"] = {"repositories": [repository]}
            path = "spec.backup_config.repositories[0].base_path"
        response = await api.post("/v1/databases", json=body)
        assert response.status_code == 422, response.text
        assert [e["path"] for e in response.json()["details"]["errors"]] == [path]
    assert not Path(outside).exists() and not Path(inside).exists()
    await create_and_wait(api, database_body("roots"))
    response = await api.post(
        "/v1/databases/roots/restore",
        json={
            "restore_config": {
                "source_database_id": "roots",
                "source_node_name": "n1",
                "repository": {"type": "posix", "base_path": outside},
            }
        },
    )
    assert response.status_code == 422, response.text
    paths = [e["path"] for e in response.json()["details"]["errors"]]
    assert paths == ["restore_config.repository.base_path"]


@pytest.fixture
def embedded(scratch_dir: Path) -> Iterator[ServerProcess]:
    """A server on its own embedded state store."""
    proc = ServerProcess(scratch_dir / "cp", database_url=None)
    proc.start()
    try:
        yield proc
    finally:
        proc.terminate()


async def test_embedded_store_refuses_connections_without_its_password(
    embedded: ServerProcess,
) -> None:
    """The embedded store's socket answers only with the password the control plane keeps in
    a file of its own (mode 0600): the instances' OS user gets no way in through trust."""
    socket = embedded.run_dir / "store"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host=str(socket), port=5432, user="controlplane")
    password_file = embedded.data_dir / "store.password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert password_file.stat().st_uid == 0
    conn = await asyncpg.connect(
        host=str(socket),
        port=5432,
        user="controlplane",
        database="postgres",
        password=password_file.read_text().strip(),
    )
    try:
        assert await conn.fetchval("SELECT count(*) FROM tokens") >= 1
    finally:
        await conn.close()
    async with embedded.client(timeout=30) as api:  # and the server itself works on it
        assert (await api.get("/v1/databases")).status_code == 200
