"""The Swarm engine against a real single-node swarm (`e2e/swarm up`): pinned services on the
host network with a volume, a secret and a config; pending placement; one-off jobs."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from controlplane.errors import ExternalCommandError, NotFoundError
from controlplane.orchestrator import swarm_layout as layout
from controlplane.orchestrator.swarm_engine import SwarmEngine
from tests.support.eventually import eventually

SWARM_URL = os.environ.get("CONTROLPLANE_SWARM_DOCKER_HOST")
IMAGE = os.environ.get("CONTROLPLANE_SWARM_IMAGE", "controlplane-e2e/debian:bookworm")
HOST = "h1"
# An unprivileged uid:gid the secret and config belong to and the task runs as (the instance
# image's postgres user plays this part in production).
UID = "999"
VOLUME_TARGET = "/var/tmp"  # 1777 in the image, so the new volume is writable by UID

pytestmark = pytest.mark.skipif(
    not SWARM_URL,
    reason="no swarm: run `e2e/swarm up` and set CONTROLPLANE_SWARM_DOCKER_HOST "
    "(or run `e2e/swarm test`)",
)


class Cleanup:
    """What a test made on the swarm, removed afterwards whatever happened."""

    def __init__(self, engine: SwarmEngine) -> None:
        self.engine = engine
        self.token = uuid.uuid4().hex[:8]
        self.services: list[str] = []
        self.volumes: list[str] = []
        self.bases: list[str] = []

    def name(self, what: str) -> str:
        return f"cpt-{self.token}-{what}"

    async def run(self) -> None:
        for service in self.services:
            await self.engine.remove_service(service)
        for base in self.bases:
            await self.engine.remove_unused("secret", base)
            await self.engine.remove_unused("config", base)

        async def volumes_gone() -> bool:
            for volume in self.volumes:
                try:
                    await self.engine.remove_volume(volume)
                except Exception:
                    return False  # still used by a task being shut down
            return True

        await eventually(volumes_gone, timeout=30, what="volumes removed")


@pytest.fixture
async def swarm() -> AsyncIterator[tuple[SwarmEngine, Cleanup]]:
    """The swarm's manager, its one node labelled as host h1."""
    engine = SwarmEngine(SWARM_URL)
    nodes = await engine.nodes()
    assert len(nodes) == 1, nodes
    await engine.label_node(nodes[0].id, HOST)
    cleanup = Cleanup(engine)
    try:
        yield engine, cleanup
    finally:
        await cleanup.run()


def probe_script(secret_file: str, config_path: str) -> str:
    """Shell run by the pinned service: report what it sees, keep a digest on the volume."""
    secret = f"{layout.SECRETS_DIR}/{secret_file}"
    return f"""
set -eu
sha256sum < {secret} | cut -c1-64 > {VOLUME_TARGET}/secret.sha
echo "secret_sha=$(cat {VOLUME_TARGET}/secret.sha)"
echo "secret_stat=$(stat -c '%a %u:%g' {secret})"
echo "config_stat=$(stat -c '%a %u:%g' {config_path})"
echo "config_sha=$(sha256sum < {config_path} | cut -c1-64)"
echo "holders=$(grep -rlsF -f {secret} /etc /run /tmp /root {VOLUME_TARGET} | sort | tr '\\n' ' ')"
if tr '\\0' '\\n' < /proc/self/environ | grep -qF -f {secret}
then echo env=leak
else echo env=clean
fi
echo "whoami=$(id -u):$(id -g)"
echo ready
trap 'exit 0' TERM
sleep 3600 & wait
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_pinned_service_reads_its_secret_and_config_and_never_shows_the_value(
    swarm: tuple[SwarmEngine, Cleanup],
) -> None:
    """A service pinned to h1 on the host network reads its secret only from /run/secrets and
    its config at its path, and the value appears in no inspect output, label or env."""
    engine, cleanup = swarm
    value = f"repo-cipher-{uuid.uuid4().hex}".encode()
    config_text = b"port = 6432\nlisten_addresses = '127.0.0.1'\n"
    secret_base, config_base = cleanup.name("cipher"), cleanup.name("conf")
    cleanup.bases += [secret_base, config_base]
    secret = await engine.ensure_secret(secret_base, value, {"controlplane.database": "d1"})
    config = await engine.ensure_config(config_base, config_text, {})
    assert secret == layout.object_name(secret_base, value)
    config_path = "/etc/controlplane/postgresql.conf"
    spec = layout.ServiceSpec(
        name=cleanup.name("instance"),
        host_id=HOST,
        image=IMAGE,
        command=["sh", "-c", probe_script("cipher", config_path)],
        labels={"controlplane.instance": "d1-n1"},
        user=f"{UID}:{UID}",
        volume=cleanup.name("data"),
        volume_target=VOLUME_TARGET,
        secrets=[layout.FileRef(name=secret, target="cipher", uid=UID, gid=UID, mode=0o400)],
        configs=[layout.FileRef(name=config, target=config_path, uid=UID, gid=UID, mode=0o444)],
        env={"PGPORT": "6432"},
        nano_cpus=500_000_000,
        memory=256 * 1024 * 1024,
    )
    cleanup.services.append(spec.name)
    cleanup.volumes.append(spec.volume)
    await engine.apply_service(spec)
    task = await engine.wait_running(spec, within=60)

    async def report() -> dict[str, str] | None:
        lines = await engine.logs(spec.name)
        if "ready" not in lines:
            return None
        return dict(line.split("=", 1) for line in lines if "=" in line)

    seen = await eventually(report, timeout=30, what="the service's report")
    assert seen["secret_sha"] == sha(value)
    assert seen["secret_stat"] == f"400 {UID}:{UID}"
    assert seen["config_sha"] == sha(config_text)
    assert seen["config_stat"] == f"444 {UID}:{UID}"
    assert seen["holders"].split() == [f"{layout.SECRETS_DIR}/cipher"]
    assert seen["env"] == "clean"
    assert seen["whoami"] == f"{UID}:{UID}"

    service = await engine.inspect_service(spec.name)
    assert service is not None
    assert value.decode() not in json.dumps(service)
    template = service["Spec"]["TaskTemplate"]
    assert template["Placement"]["Constraints"] == [f"node.labels.controlplane.host=={HOST}"]
    assert template["ContainerSpec"]["Env"] == ["PGPORT=6432"]
    assert template["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 268435456}
    assert task.container_id is not None
    container = await engine.call(
        "inspecting the task container", lambda c: c.api.inspect_container(task.container_id)
    )
    assert container["HostConfig"]["NetworkMode"] == "host"
    assert {m["Name"] for m in container["Mounts"] if m["Type"] == "volume"} == {spec.volume}
    assert container["Config"]["Labels"]["controlplane.instance"] == "d1-n1"
    assert value.decode() not in json.dumps(container)
    stored = await engine.call("inspecting the secret", lambda c: c.api.inspect_secret(secret))
    assert value.decode() not in json.dumps(stored)
    assert stored["Spec"]["Labels"]["controlplane.database"] == "d1"

    # A one-off job pinned to the same host sees the volume the service wrote.
    job = layout.ServiceSpec(
        name=cleanup.name("job"),
        host_id=HOST,
        image=IMAGE,
        command=["sh", "-c", f"cat {VOLUME_TARGET}/secret.sha; echo done >&2; exit 3"],
        user=f"{UID}:{UID}",
        volume=spec.volume,
        volume_target=VOLUME_TARGET,
    )
    cleanup.services.append(job.name)
    streamed: list[str] = []

    async def sink(line: str) -> None:
        streamed.append(line)

    result = await engine.run_job(job, within=60, on_line=sink)
    assert result.exit_code == 3
    assert sorted(result.lines) == sorted([sha(value), "done"])
    assert streamed == result.lines
    assert await engine.inspect_service(job.name) is None


async def test_new_secret_content_makes_a_new_secret_and_the_old_one_goes_when_unused(
    swarm: tuple[SwarmEngine, Cleanup],
) -> None:
    """Updating a service to a rotated secret replaces its task; the old secret, no longer
    mounted, is removed and the new one kept."""
    engine, cleanup = swarm
    base = cleanup.name("key")
    cleanup.bases.append(base)
    old = await engine.ensure_secret(base, b"first", {})
    assert await engine.ensure_secret(base, b"first", {}) == old
    script = f"cat {layout.SECRETS_DIR}/key; echo; trap 'exit 0' TERM; sleep 3600 & wait"

    def spec(secret: str) -> layout.ServiceSpec:
        return layout.ServiceSpec(
            name=cleanup.name("rotating"),
            host_id=HOST,
            image=IMAGE,
            command=["sh", "-c", script],
            secrets=[layout.FileRef(name=secret, target="key", mode=0o400)],
        )

    cleanup.services.append(spec(old).name)
    await engine.apply_service(spec(old))
    first = await engine.wait_running(spec(old), within=60)
    assert await engine.remove_unused("secret", base) == []
    new = await engine.ensure_secret(base, b"second", {})
    assert new != old
    await engine.apply_service(spec(new))

    async def replaced() -> layout.TaskReading | None:
        task = await engine.task(spec(new).name)
        return task if task and task.id != first.id and task.state == "running" else None

    await eventually(replaced, timeout=60, what="the task replaced")
    assert await engine.remove_unused("secret", base) == [old]
    names = await engine.call(
        "listing secrets", lambda c: [s["Spec"]["Name"] for s in c.api.secrets()]
    )
    assert new in names
    assert old not in names


async def test_service_pinned_to_an_unknown_host_stays_pending_as_no_such_host(
    swarm: tuple[SwarmEngine, Cleanup],
) -> None:
    """A service pinned to a host label no node has is never scheduled: it stays pending and
    waiting for it fails as `no such host`."""
    engine, cleanup = swarm
    spec = layout.ServiceSpec(
        name=cleanup.name("nowhere"),
        host_id="h-absent",
        image=IMAGE,
        command=["sleep", "3600"],
    )
    cleanup.services.append(spec.name)
    await engine.apply_service(spec)
    with pytest.raises(NotFoundError, match="no swarm node is host h-absent"):
        await engine.wait_running(spec, within=30)
    task = await engine.task(spec.name)
    assert task is not None
    assert task.state == "pending"
    assert task.node_id is None
    assert layout.NO_SUITABLE_NODE in task.error


async def test_nodes_are_hosts_by_their_label(swarm: tuple[SwarmEngine, Cleanup]) -> None:
    """The labelled node is host h1, ready and active, so available."""
    engine, _ = swarm
    nodes = await engine.nodes()
    assert [(n.host_id, n.state, n.availability) for n in nodes] == [(HOST, "ready", "active")]
    assert [(h.id, h.state) for h in layout.hosts(nodes)] == [(HOST, "available")]


async def test_a_task_that_fails_reports_swarm_s_error_text(
    swarm: tuple[SwarmEngine, Cleanup],
) -> None:
    """Waiting for a service whose command cannot be started fails with the task's error
    text. (A command that starts and exits at once would not do: Swarm shows its task
    `running` for a moment, and a wait that looks then has seen it run.)"""
    engine, cleanup = swarm
    spec = layout.ServiceSpec(
        name=cleanup.name("failing"),
        host_id=HOST,
        image=IMAGE,
        command=["/no/such/command"],
        restart="none",
    )
    cleanup.services.append(spec.name)
    await engine.apply_service(spec)
    with pytest.raises(ExternalCommandError, match=r"/no/such/command.*no such file") as caught:
        await engine.wait_running(spec, within=60)
    assert caught.value.message.startswith(f"service {spec.name} on host {HOST} failed to start")
