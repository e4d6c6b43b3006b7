"""Restore guards: scopes, CONTROLPLANE_ALLOW_RESTORE, unknown nodes. The restore scenarios
themselves are in tests/scenarios."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.support.api import create_and_wait, database_body
from tests.support.data import posix, posix_repository, restore_config


async def test_restore_guards(api: httpx.AsyncClient, server: Any, scratch_dir: Path) -> None:
    """Restore needs the admin scope, is refused entirely when disabled, and names unknown
    target nodes."""
    repo = scratch_dir / "repo"
    config = restore_config("pitr", "n1", posix_repository(repo))
    await create_and_wait(api, database_body("pitr", backup_config=posix(repo)))
    body = {"restore_config": config, "target_nodes": ["n7"]}
    bad = await api.post("/v1/databases/pitr/restore", json=body)
    assert bad.status_code == 422
    assert bad.json()["details"]["errors"][0]["path"] == "target_nodes[0]"
    token = await asyncio.to_thread(server.create_token, "ops", "write")
    writer = await api.post(
        "/v1/databases/pitr/restore",
        json={"restore_config": config},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert writer.status_code == 403
    server.terminate()
    server.extra_env = {"CONTROLPLANE_ALLOW_RESTORE": "false"}
    server.start()
    async with server.client() as client:
        refused = await client.post("/v1/databases/pitr/restore", json={"restore_config": config})
        assert refused.status_code == 403
        assert refused.json()["name"] == "restore_not_allowed"
