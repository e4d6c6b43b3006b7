"""The short socket directories under /tmp: a clean stop removes the ones nothing needs any more,
and keeps the instances' while instances exist (they outlive the server)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from controlplane.server.runtime import tidy_run_dir
from controlplane.settings import Settings
from tests.security.conftest import Target
from tests.support.os_user import give_to_os_user
from tests.support.server import ServerProcess


@pytest.fixture
def data_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="cpsock-", dir="/tmp"))
    give_to_os_user(root)
    yield root
    shutil.rmtree(Settings(data_dir=root / "cp").run_dir, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


def test_a_clean_stop_removes_the_embedded_store_socket_dir(data_root: Path) -> None:
    """A server on the embedded store makes `/tmp/cp-…/store` for the store's socket; once it
    stops cleanly (SIGTERM) the store is down and the directory, then the run dir, are gone."""
    server = ServerProcess(data_root / "cp", database_url=None)
    server.start()
    try:
        assert any(p.name.startswith(".s.PGSQL.") for p in (server.run_dir / "store").iterdir())
        server.terminate()
        # uvicorn re-raises SIGTERM once the lifespan has shut down (exit status -15).
        assert "Application shutdown complete" in server.log_text()
        assert not server.run_dir.exists(), sorted(p.name for p in server.run_dir.rglob("*"))
        assert "removed socket directory" in server.log_text()
    finally:
        server.terminate()
        server.stop_instances()


def test_tidy_keeps_what_instances_need(data_root: Path) -> None:
    """The instances' socket directory stays while it holds a live socket, and while any
    instance exists (a stopped one is started again without it being made anew); empty
    directories go once nothing needs them; a symlink or a stranger's directory is never
    touched."""
    settings = Settings(data_dir=data_root / "cp")
    run_dir, instances = settings.run_dir, settings.data_path / "instances"
    (run_dir / "i").mkdir(parents=True)
    (run_dir / "store").mkdir()
    (instances / "inst-1").mkdir(parents=True)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(run_dir / "i" / ".s.PGSQL.5999"))
    live.listen()
    try:
        assert tidy_run_dir(settings) == [run_dir / "store"]
    finally:
        live.close()
    os.unlink(run_dir / "i" / ".s.PGSQL.5999")
    assert tidy_run_dir(settings) == []  # the instance still exists: it needs `i`
    assert (run_dir / "i").is_dir()
    (instances / "inst-1").rmdir()
    elsewhere = data_root / "elsewhere"
    elsewhere.mkdir()
    (run_dir / "store").symlink_to(elsewhere)
    assert tidy_run_dir(settings) == [run_dir / "i"]
    assert elsewhere.is_dir() and run_dir.is_dir()
    (run_dir / "store").unlink()
    os.chown(run_dir, 65534, 65534)  # nobody's now: not ours to remove
    assert tidy_run_dir(settings) == []
    assert run_dir.is_dir()


async def test_instance_sockets_outlive_a_clean_stop(
    target: Target, target_db: dict[str, Any]
) -> None:
    """A server with a running instance stops cleanly: the instance keeps running, its socket
    directory stays and still reaches it, and the restarted server finds it healthy."""
    [instance] = target_db["instances"]
    port = instance["connection_info"]["port"]
    run_dir = target.server.run_dir
    target.server.terminate()
    sockets = run_dir / "i"
    assert f".s.PGSQL.{port}" in {p.name for p in sockets.iterdir()}
    conn = await asyncpg.connect(host=str(sockets), port=port, user="postgres", database="app")
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    target.server.start()
    async with target.client("read") as api:
        database = (await api.get(f"/v1/databases/{target_db['id']}")).json()
    assert [i["state"] for i in database["instances"]] == ["available"]
