"""Security suite fixtures: the integration suite's state-store cluster, and per module one real
server with a token of each scope (made by `controlplane token create`)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration import conftest as integration

# Tests that take `deployment` run once per orchestrator, as tests/scenarios do.
from tests.scenarios.conftest import deployment, pytest_generate_tests  # noqa: F401
from tests.support.api import create_and_wait, database_body
from tests.support.os_user import give_to_os_user
from tests.support.pgcluster import ScratchCluster
from tests.support.server import ServerProcess

# One Postgres for every test server's state store, as in tests/integration.
store_cluster = integration.store_cluster
# A server of its own per test, as in tests/integration (the isolation tests change it).
store_url = integration.store_url
server = integration.server
api = integration.api

# The database hostile requests are aimed at (one node, a posix repository).
TARGET_ID = "target"


@dataclass
class Target:
    """A running server, a token per scope, and a scratch root the OS user can enter."""

    server: ServerProcess
    tokens: dict[str, str]
    root: Path

    def headers(self, scope: str | None) -> dict[str, str]:
        """Authorization for `scope` (None: no header at all)."""
        return {} if scope is None else {"Authorization": f"Bearer {self.tokens[scope]}"}

    def client(self, scope: str | None = "admin", timeout: float = 60.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server.url, headers=self.headers(scope), timeout=timeout
        )

    def log_lines(self) -> list[str]:
        """The server's log split the way a reader would (any line break)."""
        return self.server.log_text().splitlines()


@pytest.fixture(scope="module")
def target(store_cluster: ScratchCluster) -> Iterator[Target]:
    """A `controlplane serve` on a fresh store database, with read, write and admin tokens."""
    root = Path(tempfile.mkdtemp(prefix="cpsec-", dir="/tmp"))
    give_to_os_user(root)
    name = "t_" + uuid.uuid4().hex[:12]
    store_cluster.psql(f"CREATE DATABASE {name}")
    server = ServerProcess(root / "cp", database_url=store_cluster.dsn(name))
    server.start()
    try:
        tokens = {scope: server.create_token(f"sec-{scope}", scope) for scope in ("read", "write")}
        yield Target(server=server, tokens={**tokens, "admin": server.token}, root=root)
    finally:
        server.terminate()
        server.stop_instances()
        # Shown by pytest only when a test failed.
        print("---- server log (tail) ----\n" + server.log_text()[-6000:])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def target_db(target: Target) -> dict[str, Any]:
    """Database `target` (one node, a posix repository), created and completed; its view."""
    backups = target.root / "backups"
    backups.mkdir()
    give_to_os_user(backups)
    body = database_body(
        TARGET_ID,
        backup_config={"repositories": [{"type": "posix", "base_path": str(backups)}]},
    )
    async with target.client("admin") as api:
        return await create_and_wait(api, body)
