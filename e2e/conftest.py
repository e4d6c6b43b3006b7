"""e2e fixtures: one `controlplane serve` on the Docker orchestrator for the whole session.

Run through `e2e/run`, which starts a private dockerd and builds the instance image, and sets
DOCKER_HOST, CONTROLPLANE_E2E_ROOT and CONTROLPLANE_INSTANCE_IMAGE for this process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import httpx
import pytest

from e2e.support.server import DockerServer
from tests.support.os_user import give_to_os_user


@pytest.fixture(scope="session")
def docker_url() -> str:
    url = os.environ.get("DOCKER_HOST", "")
    if not url:
        pytest.fail("DOCKER_HOST is not set: run the suite with e2e/run")
    docker.DockerClient(base_url=url, version="1.41").ping()
    return url


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    """A 0755 directory owned by the Postgres OS user for data dirs and repositories."""
    root = Path(os.environ.get("CONTROLPLANE_E2E_ROOT", "/var/tmp/controlplane-e2e")) / "work"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    path = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    give_to_os_user(path)
    yield path
    if not os.environ.get("CONTROLPLANE_E2E_KEEP"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def server(work_dir: Path, docker_url: str) -> Iterator[DockerServer]:
    """The control plane under test; its containers and volumes are removed afterwards."""
    image = os.environ.get("CONTROLPLANE_INSTANCE_IMAGE", "controlplane/postgres:15")
    proc = DockerServer(work_dir / "cp", docker_url=docker_url, image=image)
    proc.start()
    try:
        yield proc
    finally:
        proc.terminate()
        # CONTROLPLANE_E2E_KEEP=1 leaves the containers for a post-mortem (`e2e/run down`).
        if not os.environ.get("CONTROLPLANE_E2E_KEEP"):
            proc.remove_containers()
        proc.stop_instances()
        print("---- server log (tail) ----\n" + proc.log_text()[-8000:])


@pytest.fixture
def repo_dir(work_dir: Path, request: pytest.FixtureRequest) -> Path:
    """A posix repository base path of the test's own (same path inside the containers)."""
    path = work_dir / f"repo-{request.node.name}"
    path.mkdir()
    give_to_os_user(path)
    return path


@pytest.fixture
async def api(server: DockerServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for `server`, authenticated with its admin token."""
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as client:
        yield client
