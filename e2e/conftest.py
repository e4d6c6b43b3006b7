"""Fixtures for what only Docker has (container layout, the compose stack).

The user scenarios themselves live in `tests/scenarios` and run here with
`--orchestrator docker`; `e2e/run` starts the private dockerd, builds the images and sets
DOCKER_HOST and CONTROLPLANE_INSTANCE_IMAGE for this process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.deployment import DockerDeployment, run_deployment


@pytest.fixture(scope="session")
def docker_deployment() -> Iterator[DockerDeployment]:
    """A control plane on the Docker orchestrator; its containers and volumes are removed
    afterwards."""
    for found in run_deployment("docker"):
        assert isinstance(found, DockerDeployment)
        yield found


@pytest.fixture(scope="session")
def docker_url(docker_deployment: DockerDeployment) -> str:
    return docker_deployment.docker_url


@pytest.fixture(scope="session")
def work_dir(docker_deployment: DockerDeployment) -> Path:
    """A 0755 directory owned by the Postgres OS user, visible to the engine at one path."""
    return docker_deployment.work_dir


@pytest.fixture
def repo_dir(docker_deployment: DockerDeployment, request: pytest.FixtureRequest) -> Path:
    return docker_deployment.repo_dir(request.node.name)


@pytest.fixture
async def api(docker_deployment: DockerDeployment) -> AsyncIterator[httpx.AsyncClient]:
    server = docker_deployment.server
    async with server.client(timeout=60) as client:
        yield client
