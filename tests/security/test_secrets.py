"""Repository secrets reach the pgBackRest commands that need them, and nothing else: no
instance file, no other process's environment or argv, no log, no response. On each
orchestrator (`--orchestrator`, as tests/scenarios; e2e/run runs it on Docker)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest

from controlplane.settings import Settings
from tests.support.api import create_and_wait, database_body, full_log
from tests.support.data import backup, query, restore, restore_config, write_rows
from tests.support.deployment import Deployment
from tests.support.object_storage import ObjectStorage, start_s3
from tests.support.processes import files_holding, instance_postmaster, secret_holders

# The commands the secrets are for: pgBackRest itself (the control plane's own runs, and the
# archive-push/archive-get that Postgres starts through the runner).
PGBACKREST = frozenset({"pgbackrest"})
# What descriptor 9 of a postmaster is, per orchestrator: the file handed over at its start.
HANDED = {
    "local": "/memfd:controlplane-secrets",
    "docker": "/run/controlplane-secrets/env",
    "swarm": "/run/secrets/controlplane-postmaster-env",
}


@pytest.fixture
def s3(deployment: Deployment) -> Iterator[ObjectStorage]:
    server = start_s3(deployment.work_dir / f"s3-{uuid.uuid4().hex[:8]}")
    try:
        yield server
    finally:
        server.cleanup()


async def test_canary_secrets_reach_only_pgbackrest(
    deployment: Deployment, s3: ObjectStorage
) -> None:
    """With an S3 key, key secret and cipher passphrase as canaries: a backup completes (its
    WAL was archived) and an in-place restore to the latest point brings back rows that were
    only in archived WAL (so archive-push and archive-get had the secrets), while no instance
    file, no process other than pgBackRest, no log line and no response holds any of them."""
    tag = uuid.uuid4().hex
    repository = {
        "type": "s3",
        "s3_bucket": s3.bucket,
        "s3_region": s3.region,
        "s3_endpoint": "localhost",
        "s3_uri_style": "path",
        "s3_key": f"CANARYKEY{tag[:12].upper()}",
        "s3_key_secret": f"canary-secret-{tag}",
        "storage_port": s3.port,
        "storage_ca_file": str(s3.ca_file),
        "base_path": f"/canary-{tag[:8]}",
        "cipher": True,
    }
    server = deployment.server
    async with server.client(timeout=60) as api:
        body = database_body("canary", backup_config={"repositories": [repository]})
        database = await create_and_wait(api, body)
        await write_rows(database, 1, 200)
        tasks = [await backup(api, "canary", "n1")]
        await write_rows(database, 201, 100)  # only in WAL: the restore must archive-get it
        config = restore_config("canary", "n1", repository)
        restored = await restore(api, "canary", {"restore_config": config})
        tasks += [restored["task"], *restored["node_tasks"]]
        assert await query(database, "n1", "SELECT count(*) FROM items") == 300

        postmaster = instance_postmaster("canary-n1")
        assert postmaster is not None
        handed = os.readlink(f"/proc/{postmaster}/fd/9")
        assert handed.startswith(HANDED[deployment.orchestrator]), handed

        passphrase = server.instance_env("canary-n1")["PGBACKREST_REPO1_CIPHER_PASS"]
        canaries = [repository["s3_key"], repository["s3_key_secret"], passphrase]
        assert secret_holders(canaries, allowed=PGBACKREST) == []
        settings = Settings(data_dir=server.data_dir)
        for root in (server.data_dir, settings.run_dir, settings.memory_dir):
            if root.exists():
                assert await asyncio.to_thread(files_holding, root, canaries) == [], root
        texts = [server.log_text(), (await api.get("/v1/databases/canary")).text]
        texts.append((await api.get("/v1/tasks")).text)
        texts.append(await asyncio.to_thread(deployment.visible_config, "canary-n1"))
        for task in tasks:
            texts += [str(entry) for entry in await full_log(api, "canary", task["task_id"])]
        assert not [t for t in texts if any(c in t for c in canaries)]
