"""The user scenarios, once per orchestrator: `--orchestrator local|docker|local,docker`
(default: $CONTROLPLANE_ORCHESTRATOR, else local). Every test gets the orchestrator's name in
its id, e.g. `test_pitr_in_place[docker]`; each orchestrator runs one server per session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.deployment import Deployment, run_deployment


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "deployment" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("orchestrator")
        metafunc.parametrize("orchestrator", chosen, scope="session")


@pytest.fixture(scope="session")
def deployment(orchestrator: str) -> Iterator[Deployment]:
    yield from run_deployment(orchestrator)


@pytest.fixture
async def api(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the deployment's server, authenticated with its admin token."""
    server = deployment.server
    async with server.client(timeout=60) as client:
        yield client


@pytest.fixture
def repo_dir(deployment: Deployment, request: pytest.FixtureRequest) -> Path:
    """A posix repository base path of the test's own."""
    return deployment.repo_dir(request.node.name.replace("[", "-").rstrip("]"))
