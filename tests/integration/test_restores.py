"""Restore guards (scopes, CONTROLPLANE_ALLOW_RESTORE, unknown nodes) and the helpers other
restore tests share. The restore scenarios themselves are in tests/scenarios."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.integration.test_backups import posix_config
from tests.support.api import connect, create_and_wait, database_body


def restore_config(
    repo: Path, node: str = "n1", database_id: str = "pitr", **options: str
) -> dict[str, Any]:
    return {
        "source_database_id": database_id,
        "source_node_name": node,
        "repository": {"type": "posix", "base_path": str(repo)},
        "restore_options": options,
    }


async def now_on(database: dict[str, Any]) -> str:
    conn = await connect(database, "n1")
    try:
        value = await conn.fetchval("SELECT clock_timestamp()")
    finally:
        await conn.close()
    return str(value.isoformat())


async def test_restore_guards(api: httpx.AsyncClient, server: Any, scratch_dir: Path) -> None:
    """Restore needs the admin scope, is refused entirely when disabled, and names unknown
    target nodes."""
    repo = scratch_dir / "repo"
    await create_and_wait(api, database_body("pitr", backup_config=posix_config(repo)))
    body = {"restore_config": restore_config(repo), "target_nodes": ["n7"]}
    bad = await api.post("/v1/databases/pitr/restore", json=body)
    assert bad.status_code == 422
    assert bad.json()["details"]["errors"][0]["path"] == "target_nodes[0]"
    token = await asyncio.to_thread(server.create_token, "ops", "write")
    writer = await api.post(
        "/v1/databases/pitr/restore",
        json={"restore_config": restore_config(repo)},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert writer.status_code == 403
    server.terminate()
    server.extra_env = {"CONTROLPLANE_ALLOW_RESTORE": "false"}
    server.start()
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers) as client:
        refused = await client.post(
            "/v1/databases/pitr/restore", json={"restore_config": restore_config(repo)}
        )
        assert refused.status_code == 403
        assert refused.json()["name"] == "restore_not_allowed"
