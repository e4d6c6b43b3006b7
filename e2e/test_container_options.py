"""pgEdge's container options on the Docker and Swarm orchestrators (`--orchestrator docker`,
or `swarm` in `e2e/swarm scenarios`): cpus, memory, extra labels, an image and extra volumes,
with a posix repository on an extra volume as in pgEdge's NFS recipe. On swarm they are the
instance service's resource limits, labels, image and bind mounts, seen on its task's
container."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import create_and_wait, database_body
from tests.support.data import (
    TABLE,
    backup,
    digest,
    on_every,
    posix_repository,
    restore,
    restore_config,
    update_and_wait,
    write,
)
from tests.support.deployment import DockerDeployment, SwarmDeployment, run_deployment

# pgEdge's guide: the share is mounted at /backups in the container, and the repository's
# base_path is that destination. The host never sees /backups itself.
DESTINATION = "/backups"
MiB = 1024 * 1024


# One worker runs this module: its deployment is the module's own.
pytestmark = pytest.mark.xdist_group("container_options")


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest) -> Iterator[DockerDeployment]:
    """A control plane whose backup roots admit the guide's in-container path, on swarm when
    that is the orchestrator asked for, else on docker."""
    roots = "/tmp,/var/tmp,/var/backups,/backups"
    orchestrator = "swarm" if "swarm" in request.config.getoption("orchestrator") else "docker"
    for found in run_deployment(orchestrator, {"CONTROLPLANE_BACKUP_ROOTS": roots}):
        assert isinstance(found, DockerDeployment)
        yield found


@pytest.fixture
async def api(deployment: DockerDeployment) -> AsyncIterator[httpx.AsyncClient]:
    async with deployment.server.client(timeout=60) as client:
        yield client


def _instance(deployment: DockerDeployment, database_id: str) -> Any:
    found = deployment.containers(database=database_id, role="instance")
    [container] = [c for c in found if c.status == "running"]
    return container


def _service_limits(deployment: DockerDeployment, database_id: str) -> dict[str, int] | None:
    """On swarm, the instance service's resource limits as `docker service inspect` shows
    them; None on docker."""
    if not isinstance(deployment, SwarmDeployment):
        return None
    [service] = deployment.services(database=database_id, role="instance")
    limits: dict[str, int] = service.attrs["Spec"]["TaskTemplate"]["Resources"]["Limits"]
    return limits


def _share(deployment: DockerDeployment, name: str) -> Path:
    """A host directory standing for the NFS share: root's, as a mounted share would be."""
    share = deployment.work_dir / f"nfs-{name}"
    share.mkdir(mode=0o755)
    return share


def _node(share: Path, cpus: str, labels: dict[str, str], **swarm: Any) -> dict[str, Any]:
    volume = {"host_path": str(share), "destination_path": DESTINATION}
    return {
        "name": "n1",
        "cpus": cpus,
        "orchestrator_opts": {
            "swarm": {"extra_volumes": [volume], "extra_labels": labels, **swarm}
        },
        "backup_config": {"repositories": [posix_repository(DESTINATION)]},
    }


async def test_options_reach_the_container_and_backups_land_on_the_share(
    api: httpx.AsyncClient, deployment: DockerDeployment
) -> None:
    """The node's cpus and orchestrator_opts (over the database's) and the database's memory
    are the container's NanoCpus, labels and Memory; the share is bind-mounted at /backups and
    a backup goes through it into the host directory, where an in-place restore reads it
    back."""
    share = _share(deployment, "boxed")
    body = database_body(
        "boxed",
        cpus="0.5",
        memory="256MiB",
        orchestrator_opts={"swarm": {"extra_labels": {"scope": "database"}}},
    )
    body["spec"]["nodes"] = [_node(share, "1.5", {"team": "payments"})]
    database = await create_and_wait(api, body)

    container = await asyncio.to_thread(_instance, deployment, "boxed")
    host_config = container.attrs["HostConfig"]
    assert host_config["NanoCpus"] == 1_500_000_000
    assert host_config["Memory"] == 256 * MiB
    assert container.labels["team"] == "payments"
    assert "scope" not in container.labels  # the node's orchestrator_opts replace the database's
    assert container.labels["controlplane.node"] == "n1"
    limits = await asyncio.to_thread(_service_limits, deployment, "boxed")
    on_swarm = deployment.server.extra_env["CONTROLPLANE_ORCHESTRATOR"] == "swarm"
    expected = {"NanoCPUs": 1_500_000_000, "MemoryBytes": 256 * MiB} if on_swarm else None
    assert limits == expected
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert (mounts[DESTINATION]["Source"], mounts[DESTINATION]["RW"]) == (str(share), True)
    # The repository is reached through the share, not mounted at its own path.
    assert not [d for d in mounts if d.startswith(DESTINATION + "/")]

    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    expected = await digest(database)
    first = await backup(api, "boxed")
    on_share = share / "databases" / "boxed"
    assert list(on_share.rglob("backup.info"))
    manifests = list(on_share.rglob("backup.manifest"))
    assert [m for m in manifests if m.parent.name == first["result"]["label"]]
    assert not await asyncio.to_thread(Path(DESTINATION, "databases", "boxed").exists)

    # An in-place restore runs pgBackRest in a one-off container: the share is there too.
    await write(database, "n1", range(101, 151))
    config = restore_config(
        "boxed", "n1", posix_repository(DESTINATION), type="immediate", set=first["result"]["label"]
    )
    await restore(api, "boxed", {"restore_config": config})
    assert await digest(database) == expected


async def test_changed_options_recreate_the_container(
    api: httpx.AsyncClient, deployment: DockerDeployment
) -> None:
    """An update that changes cpus, memory, labels or the image recreates the container with
    them (the data volume stays); an update that changes none of them leaves it running."""
    share = _share(deployment, "resized")
    body = database_body("resized", memory="256MiB")
    body["spec"]["nodes"] = [_node(share, "1", {"team": "payments"})]
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 51))
    before = await asyncio.to_thread(_instance, deployment, "resized")
    assert before.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000

    await update_and_wait(api, body)
    same = await asyncio.to_thread(_instance, deployment, "resized")
    assert same.id == before.id

    image = os.environ.get("CONTROLPLANE_INSTANCE_IMAGE", "controlplane/postgres:15")
    tagged = f"{image.rsplit(':', 1)[0]}:options-e2e"
    await asyncio.to_thread(deployment.client.images.get(image).tag, tagged)
    try:
        body["spec"]["memory"] = "512MiB"
        body["spec"]["nodes"] = [_node(share, "2", {"tier": "gold"}, image=tagged)]
        await update_and_wait(api, body)
        after = await asyncio.to_thread(_instance, deployment, "resized")
        assert after.id != before.id
        assert after.attrs["HostConfig"]["NanoCpus"] == 2_000_000_000
        assert after.attrs["HostConfig"]["Memory"] == 512 * MiB
        assert after.attrs["Config"]["Image"] == tagged
        assert after.labels["tier"] == "gold"
        assert "team" not in after.labels
        assert (await digest(database)).startswith("50:")
    finally:
        # Only the tag goes (the image keeps its own name); the deployment removes containers.
        await asyncio.to_thread(deployment.client.images.remove, tagged, force=True)


async def test_extra_volumes_stay_inside_the_backup_roots(api: httpx.AsyncClient) -> None:
    """A host_path outside the operator's backup roots is refused at its path, before anything
    is created."""
    body = database_body("escape")
    body["spec"]["nodes"][0]["orchestrator_opts"] = {
        "swarm": {"extra_volumes": [{"host_path": "/etc", "destination_path": "/backups"}]}
    }
    response = await api.post("/v1/databases", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["details"]["errors"]
    path = "spec.nodes[0].orchestrator_opts.swarm.extra_volumes[0].host_path"
    assert [e["path"] for e in errors] == [path]
    assert "backup roots" in errors[0]["message"]
    assert (await api.get("/v1/databases/escape")).status_code == 404
