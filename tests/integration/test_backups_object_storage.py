"""Backups to S3, Azure and GCS repositories (real servers on localhost with TLS) via the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import connect, create_and_wait, database_body, full_log, wait_task
from tests.support.data import CHECKSUM, backup, checksum, write_rows
from tests.support.object_storage import (
    KINDS,
    ObjectStorage,
    missing_requirements,
    start_object_storage,
)
from tests.support.restore_check import restore_and_query
from tests.support.server import ServerProcess

pytestmark = pytest.mark.skipif(
    bool(missing_requirements()),
    reason=f"object storage servers not installed: {missing_requirements()} "
    "(run tests/support/install-object-storage.sh)",
)
CANARY_SECRET = "canary-secret-5b1e7d0c"


@pytest.fixture(params=KINDS)
def storage(request: pytest.FixtureRequest, scratch_dir: Path) -> Iterator[ObjectStorage]:
    """A running object storage server of each kind."""
    server = start_object_storage(request.param, scratch_dir / "objects")
    try:
        yield server
    finally:
        server.cleanup()


def repository(storage: ObjectStorage, **extra: Any) -> dict[str, Any]:
    """The spec's repository entry for a running server (its keys are write-only fields)."""
    common = {
        "storage_port": storage.port,
        "storage_ca_file": str(storage.ca_file),
        "base_path": "/controlplane",
        **extra,
    }
    if storage.type == "s3":
        return {
            "type": "s3",
            "s3_bucket": storage.bucket,
            "s3_region": storage.region,
            "s3_endpoint": "localhost",
            "s3_uri_style": "path",
            "s3_key": storage.key,
            "s3_key_secret": CANARY_SECRET,
            **common,
        }
    if storage.type == "azure":
        return {
            "type": "azure",
            "azure_account": storage.account,
            "azure_container": storage.bucket,
            "azure_endpoint": "localhost",
            "azure_uri_style": "path",
            "azure_key": storage.key,
            **common,
        }
    return {
        "type": "gcs",
        "gcs_bucket": storage.bucket,
        "gcs_endpoint": "localhost",
        "gcs_key_type": "token",
        "gcs_key": storage.key,
        **common,
    }


async def test_object_storage_backups_restore_exact_rows(
    api: httpx.AsyncClient, server: ServerProcess, storage: ObjectStorage, scratch_dir: Path
) -> None:
    """Full, incr and diff backups to the object store list in order and each restores to the
    rows present when it was taken; the storage secret appears nowhere."""
    body = database_body("obj", backup_config={"repositories": [repository(storage)]})
    database = await create_and_wait(api, body)
    await write_rows(database, 1, 500)
    expected, tasks = {}, {}
    for kind, start in (("full", 501), ("incr", 1001), ("diff", 1501)):
        tasks[kind] = await backup(api, "obj", "n1", type=kind)
        expected[kind] = await checksum(database)
        await write_rows(database, start, 250)
    sets = (await api.get("/v1/databases/obj/nodes/n1/backups")).json()["backups"]
    assert [s["type"] for s in sets] == ["full", "incr", "diff"]
    assert [s["task_id"] for s in sets] == [tasks[k]["task_id"] for k in ("full", "incr", "diff")]
    assert {s["repository_id"] for s in sets} == {storage.type}
    config = str(server.data_dir / "instances" / "obj-n1" / "pgbackrest.conf")
    env = server.instance_env("obj-n1")
    for kind, entry in zip(("full", "incr", "diff"), sets, strict=True):
        restored = await asyncio.to_thread(
            restore_and_query, config, entry["label"], CHECKSUM, scratch_dir, env=env
        )
        assert restored == expected[kind], kind
    if storage.type == "s3":
        instance_files = (server.data_dir / "instances" / "obj-n1").glob("*")
        texts = [
            server.log_text(),
            (await api.get("/v1/databases/obj")).text,
            *(p.read_text(errors="replace") for p in instance_files if p.is_file()),
        ]
        for task in tasks.values():
            texts += [str(e) for e in await full_log(api, "obj", task["task_id"])]
        assert not [t for t in texts if CANARY_SECRET in t]


async def test_unreachable_repository_fails_the_task_in_words(
    api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """With the S3 server gone, a backup fails with a readable error naming the host, within
    a bounded time, and the node keeps serving."""
    storage = start_object_storage("s3", scratch_dir / "objects")
    try:
        repo = repository(storage, custom_options={"io-timeout": "1", "archive-timeout": "5"})
        database = await create_and_wait(
            api, database_body("gone", backup_config={"repositories": [repo]})
        )
        await write_rows(database, 1, 10)
    finally:
        storage.cleanup()
    began = time.monotonic()
    response = await api.post("/v1/databases/gone/nodes/n1/backups", json={})
    task = await wait_task(api, "gone", response.json()["task"]["task_id"], timeout=300)
    elapsed = time.monotonic() - began
    assert task["status"] == "failed"
    assert "backup" in task["error"] or "stanza" in task["error"]
    assert f"localhost:{storage.port}" in task["error"] or "connect" in task["error"]
    assert elapsed < 240
    conn = await connect(database, "n1")
    try:
        assert await conn.fetchval("SELECT count(*) FROM items") == 10
    finally:
        await conn.close()
    state = (await api.get("/v1/databases/gone")).json()
    assert state["state"] == "available"


async def test_stored_keys_never_follow_a_changed_endpoint(
    api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """A write-only key omitted from an update is kept only while the repository names the same
    storage: pointing it at another endpoint or port without giving the keys again is a 422 on
    each key's path (nothing changes), and so is a restore whose repository does the same."""
    storage = start_object_storage("s3", scratch_dir / "objects")
    try:
        body = database_body("keys", backup_config={"repositories": [repository(storage)]})
        await create_and_wait(api, body)
        kept = repository(storage)
        for name in ("s3_key", "s3_key_secret"):
            del kept[name]
        body["spec"]["backup_config"] = {"repositories": [kept]}
        body["spec"]["postgresql_conf"] = {"work_mem": "8MB"}
        response = await api.post("/v1/databases/keys", json=body)  # same storage: kept
        assert response.status_code == 202, response.text
        task = await wait_task(api, "keys", response.json()["task"]["task_id"])
        assert task["status"] == "completed", task["error"]
        prefix = "spec.backup_config.repositories[0]"
        for change in ({"storage_port": storage.port + 1}, {"s3_endpoint": "localhost.evil"}):
            moved = {**kept, **change}
            body["spec"]["backup_config"] = {"repositories": [moved]}
            response = await api.post("/v1/databases/keys", json=body)
            assert response.status_code == 422, response.text
            paths = [e["path"] for e in response.json()["details"]["errors"]]
            assert paths == [f"{prefix}.s3_key", f"{prefix}.s3_key_secret"], paths
            restore = {
                "source_database_id": "keys",
                "source_node_name": "n1",
                "repository": moved,
            }
            response = await api.post(
                "/v1/databases/keys/restore", json={"restore_config": restore}
            )
            assert response.status_code == 422, response.text
            paths = [e["path"] for e in response.json()["details"]["errors"]]
            assert paths == [
                "restore_config.repository.s3_key",
                "restore_config.repository.s3_key_secret",
            ]
        stored = (await api.get("/v1/databases/keys")).json()["spec"]["backup_config"]
        assert stored["repositories"][0]["storage_port"] == storage.port
    finally:
        storage.cleanup()
