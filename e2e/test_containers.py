"""How the Docker orchestrator lays instances out: labels, host networking, mounts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.support.api import create_and_wait, database_body, wait_task
from tests.support.data import TABLE, backup, converged, on_every, posix, update_and_wait, write
from tests.support.deployment import DockerDeployment


async def test_instances_are_labelled_containers_on_the_host_network(
    api: httpx.AsyncClient, docker_deployment: DockerDeployment
) -> None:
    """Each node is one running container labelled with its database, node and instance, on
    the host network (never a bridge), its data in a named volume."""
    database = await create_and_wait(api, database_body("layout", nodes=2))
    found = await asyncio.to_thread(docker_deployment.containers, database="layout")
    assert sorted(
        (c.labels["controlplane.node"], c.labels["controlplane.role"]) for c in found
    ) == [
        ("n1", "instance"),
        ("n2", "instance"),
    ]
    for container in found:
        assert container.status == "running"
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        node = container.labels["controlplane.node"]
        assert container.labels["controlplane.instance"] == f"layout-{node}"
        volumes = [m for m in container.attrs["Mounts"] if m["Type"] == "volume"]
        assert [m["Destination"] for m in volumes] and all(m["RW"] for m in volumes)
    await on_every(database, TABLE)
    await write(database, "n2", range(1, 21))
    await converged(database, 20)


async def test_backups_enabled_later_get_their_mount(
    api: httpx.AsyncClient, docker_deployment: DockerDeployment, repo_dir: Path
) -> None:
    """Adding a posix repository to a running database recreates its container with the new
    mount, so the backup lands in the host path (never inside the container's own layer)."""
    body = database_body("later-mount")
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 11))
    [before] = await asyncio.to_thread(
        docker_deployment.containers, database="later-mount", role="instance"
    )
    body["spec"]["backup_config"] = posix(repo_dir)
    await update_and_wait(api, body)
    [after] = await asyncio.to_thread(
        docker_deployment.containers, database="later-mount", role="instance"
    )
    assert after.id != before.id
    mounts = {m["Destination"]: m["RW"] for m in after.attrs["Mounts"]}
    assert mounts[str(repo_dir / "databases" / "later-mount")] is True
    await backup(api, "later-mount")
    assert list((repo_dir / "databases" / "later-mount").rglob("backup.info"))


async def test_a_drill_restores_a_set_in_a_scratch_container(
    api: httpx.AsyncClient, docker_deployment: DockerDeployment, repo_dir: Path
) -> None:
    """A restore drill on docker restores the node's set into a scratch container, counts its
    rows and checks it with pg_amcheck, then removes the scratch."""
    database = await create_and_wait(api, database_body("drilled", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 43))
    await backup(api, "drilled")
    response = await api.post("/v1/databases/drilled/nodes/n1/backups/verify", json={"drill": True})
    assert response.status_code == 202, response.text
    task = await wait_task(api, "drilled", response.json()["task"]["task_id"], timeout=300)
    assert task["status"] == "completed", task["error"]
    assert task["result"]["row_counts"]["public.items"] == 42, task["result"]
    left = await asyncio.to_thread(docker_deployment.containers, database="drilled")
    assert {c.labels["controlplane.instance"] for c in left} == {"drilled-n1"}, [
        c.name for c in left
    ]
