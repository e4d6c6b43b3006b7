"""Integration fixtures: a shared state-store cluster and a real server per test."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.os_user import give_to_os_user
from tests.support.pgcluster import ScratchCluster
from tests.support.server import ServerProcess, serving


@pytest.fixture(scope="session")
def store_cluster() -> Iterator[ScratchCluster]:
    """One Postgres for every test server's state store (each test gets its own database)."""
    root = Path(tempfile.mkdtemp(prefix="cps-", dir="/tmp"))
    give_to_os_user(root)
    cluster = ScratchCluster(root)
    cluster.start()
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def store_url(store_cluster: ScratchCluster) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    store_cluster.psql(f"CREATE DATABASE {name}")
    return store_cluster.dsn(name)


@pytest.fixture
def server(scratch_dir: Path, store_url: str) -> Iterator[ServerProcess]:
    """A running `controlplane serve` on a fresh store database and data dir."""
    with serving(scratch_dir / "cp", database_url=store_url) as proc:
        yield proc


@pytest.fixture
async def api(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for `server`, authenticated with its admin token."""
    async with server.client(timeout=30) as client:
        yield client
