"""`controlplane serve` for the e2e suite, with the Docker orchestrator wired in.

Until `runtime.make_orchestrator` builds the Docker orchestrator itself, this entry point
supplies it (hosts from `CONTROLPLANE_DOCKER_HOSTS`); once it does, this adds nothing.
"""

from __future__ import annotations

import os

from controlplane import cli, runtime
from controlplane.orchestrator.base import Orchestrator
from controlplane.orchestrator.docker import DockerOrchestrator, load_docker_hosts
from controlplane.settings import Settings

_builtin = runtime.make_orchestrator


def make_orchestrator(settings: Settings) -> Orchestrator:
    try:
        return _builtin(settings)
    except NotImplementedError:
        if settings.orchestrator != "docker":
            raise
    hosts = load_docker_hosts(
        os.environ.get("CONTROLPLANE_DOCKER_HOSTS"), default_url=settings.docker_url
    )
    return DockerOrchestrator(settings, hosts=hosts)


if __name__ == "__main__":
    runtime.make_orchestrator = make_orchestrator
    cli.main()
