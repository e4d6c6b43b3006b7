"""Backups to S3 (moto under gunicorn with TLS on localhost)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.api import create_and_wait, database_body, full_log
from tests.support.data import TABLE, backup, digest, on_every, restore, restore_config, write
from tests.support.deployment import Deployment
from tests.support.object_storage import ObjectStorage, missing_requirements, start_s3

pytestmark = pytest.mark.skipif(
    bool(missing_requirements(("s3",))),
    reason=f"S3 test server not installed: {missing_requirements(('s3',))}",
)


@pytest.fixture
def s3(deployment: Deployment) -> Iterator[ObjectStorage]:
    """A moto S3 server with TLS; its CA file is readable by the instances (and so is
    bind-mounted into containers)."""
    server = start_s3(deployment.work_dir / "s3")
    try:
        yield server
    finally:
        server.cleanup()


def s3_repository(storage: ObjectStorage) -> dict[str, Any]:
    return {
        "type": "s3",
        "base_path": "/controlplane",
        "s3_bucket": storage.bucket,
        "s3_region": storage.region,
        "s3_endpoint": "localhost",
        "s3_uri_style": "path",
        "s3_key": storage.key,
        "s3_key_secret": storage.key_secret,
        "storage_port": storage.port,
        "storage_ca_file": str(storage.ca_file),
    }


async def test_s3_backup_and_restore_in_place(
    api: httpx.AsyncClient, deployment: Deployment, s3: ObjectStorage
) -> None:
    """A full backup to S3 restores in place to exactly the backed-up rows; the keys appear in
    no response, no task log and nothing an instance's inspector can read."""
    repository = s3_repository(s3)
    body = database_body("s3", backup_config={"repositories": [repository]})
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 501))
    expected = await digest(database)
    first = await backup(api, "s3")
    await write(database, "n1", range(501, 601))
    config = restore_config("s3", "n1", repository, type="immediate", set=first["result"]["label"])
    result = await restore(api, "s3", {"restore_config": config})
    assert await digest(database) == expected

    secret = s3.key_secret
    assert secret
    seen = [
        (await api.get("/v1/databases/s3")).text,
        (await api.get("/v1/databases/s3/nodes/n1/backups")).text,
        str(await full_log(api, "s3", first["task_id"])),
        str(await full_log(api, "s3", result["task"]["task_id"])),
        str(await full_log(api, "s3", result["node_tasks"][0]["task_id"])),
        await asyncio.to_thread(deployment.visible_config, "s3-n1"),
    ]
    assert all(secret not in text for text in seen)
    assert "s3" in seen[-1]  # the repository really is configured there
