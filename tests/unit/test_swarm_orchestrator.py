"""How the swarm orchestrator turns the Docker layout's containers into pinned services."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from docker.types import ServiceMode

from controlplane.orchestrator import docker_layout
from controlplane.orchestrator import instance_secrets as staged
from controlplane.orchestrator import swarm_layout as layout
from controlplane.orchestrator.docker_engine import ContainerSpec
from controlplane.orchestrator.swarm_engine import SwarmEngine, _service_kwargs
from controlplane.orchestrator.swarm_orchestrator import POSTMASTER_SECRET, SwarmTasks, secret_argv


def tasks() -> SwarmTasks:
    # No call reaches an engine here: the URL is never dialled.
    url = "unix:///nonexistent.sock"
    return SwarmTasks(SwarmEngine(url), url, grace_seconds=1.0)


def container(**labels: str) -> ContainerSpec:
    return ContainerSpec(
        image="img:15",
        command=["postgres", "-D", docker_layout.PGDATA],
        labels={"controlplane.instance": "db-n1", **labels},
        mounts=[
            docker_layout.MountSpec(
                target="/cp/instances/db-n1", source="/cp/instances/db-n1", read_only=True
            ),
            docker_layout.MountSpec(target="/repo/databases/db", source="/repo/databases/db"),
            docker_layout.MountSpec(
                target=docker_layout.VOLUME_TARGET, source="cp-x-db-n1-data", kind="volume"
            ),
        ],
        environment={},
        nano_cpus=500_000_000,
        mem_limit=1 << 30,
    )


def test_a_container_becomes_a_service_pinned_to_its_host_label() -> None:
    spec = tasks().service_spec(
        "cp-x-db-n1", container(**{layout.HOST_LABEL: "h2"}), stop_signal="SIGINT"
    )
    assert spec.host_id == "h2"
    assert spec.command[: len(docker_layout.ENTRYPOINT)] == docker_layout.ENTRYPOINT
    assert spec.command[len(docker_layout.ENTRYPOINT) :] == ["postgres", "-D", docker_layout.PGDATA]
    assert (spec.volume, spec.volume_target) == ("cp-x-db-n1-data", docker_layout.VOLUME_TARGET)
    assert sorted((b.target, b.read_only) for b in spec.binds) == [
        ("/cp/instances/db-n1", True),
        ("/repo/databases/db", False),
    ]
    assert (spec.user, spec.restart, spec.nano_cpus, spec.memory) == (
        "postgres",
        "none",
        500_000_000,
        1 << 30,
    )

    # With no secrets or configs, no object is looked up: the listings are never called.
    client = SimpleNamespace(api=SimpleNamespace(secrets=None, configs=None))
    kwargs = _service_kwargs(client, spec, ServiceMode("replicated", replicas=1))
    template = kwargs["task_template"]
    container_spec = template["ContainerSpec"]
    assert template["Placement"]["Constraints"] == ["node.labels.controlplane.host==h2"]
    assert container_spec["StopSignal"] == "SIGINT"
    assert "Env" not in container_spec
    mounts = {m["Target"]: (m["Type"], m.get("ReadOnly", False)) for m in container_spec["Mounts"]}
    assert mounts == {
        docker_layout.VOLUME_TARGET: ("volume", False),
        "/cp/instances/db-n1": ("bind", True),
        "/repo/databases/db": ("bind", False),
    }


def test_a_service_without_a_host_label_goes_to_the_default_host() -> None:
    assert tasks().service_spec("cp-x-db-n1", container()).host_id == "local"


def test_the_runner_takes_secrets_only_from_the_postmaster_secret() -> None:
    """pgBackRest run by Postgres sources descriptor 9 when it is the swarm secret file."""
    assert f"{layout.SECRETS_DIR}/{POSTMASTER_SECRET}" == staged.SWARM_SECRET_FILE
    assert f"| {staged.SWARM_SECRET_FILE})" in staged.RUNNER


def test_postgres_and_patroni_take_their_secrets_from_the_swarm_secret() -> None:
    """Both commands of the Docker layout run the same program with the Swarm secret on
    descriptor 9 (kept: it is read-only) instead of a staged file they delete."""
    postgres = docker_layout.postgres_argv("/cp/instances/db-n1", ["port=5433"])
    patroni = docker_layout.patroni_argv("/cp/instances/db-n1/patroni.json")
    for argv in (postgres, patroni):
        swarm = secret_argv(argv)
        assert swarm[3] == staged.SWARM_SECRET_FILE
        assert swarm[4:] == argv[4:]
        assert f"exec {staged.SECRETS_FD}<" in swarm[2] and "rm " not in swarm[2]
    assert docker_layout.PATRONI in secret_argv(patroni)
    with pytest.raises(ValueError, match="not a command of the Docker layout"):
        secret_argv(["postgres", "-D", docker_layout.PGDATA, "-c"])
