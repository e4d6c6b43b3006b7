"""Backups to S3 (moto under gunicorn TLS on localhost) from containers on the host network."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.support.data import TABLE, backup, digest, on_every, restore, restore_config, write
from e2e.support.server import DockerServer
from tests.support.api import create_and_wait, database_body
from tests.support.object_storage import ObjectStorage, missing_requirements, start_s3

pytestmark = pytest.mark.skipif(
    bool(missing_requirements(("s3",))),
    reason=f"S3 test server not installed: {missing_requirements(('s3',))}",
)


@pytest.fixture
def s3(work_dir: Path) -> Iterator[ObjectStorage]:
    """A moto S3 server with TLS; its CA file is bind-mounted read-only into the containers."""
    server = start_s3(work_dir / "s3")
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
    api: httpx.AsyncClient, server: DockerServer, s3: ObjectStorage
) -> None:
    """A full backup to S3 restores in place to exactly the backed-up rows, and the keys never
    appear in the container's configuration."""
    repository = s3_repository(s3)
    body = database_body("e2e-s3", backup_config={"repositories": [repository]})
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 501))
    expected = await digest(database)
    first = await backup(api, "e2e-s3")
    await write(database, "n1", range(501, 601))
    config = restore_config(
        "e2e-s3", "n1", repository, type="immediate", set=first["result"]["label"]
    )
    await restore(api, "e2e-s3", {"restore_config": config})
    assert await digest(database) == expected
    [container] = await asyncio.to_thread(server.containers, database="e2e-s3", role="instance")
    assert s3.key_secret and s3.key_secret not in str(container.attrs["Config"])
