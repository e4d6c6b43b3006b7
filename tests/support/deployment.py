"""A control plane under test on one orchestrator, and what a scenario may ask of its instances.

Scenarios drive everything through the HTTP API. The few questions the API does not answer
(which instances really run, whether a restore is in flight, what the instance can read) are
asked here, once per orchestrator: local postmasters and pgBackRest processes, or containers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.os_user import give_to_os_user
from tests.support.processes import cmdlines, postmasters_under
from tests.support.server import ServerProcess

ORCHESTRATORS = ("local", "docker", "swarm")
E2E_ROOT = Path(os.environ.get("CONTROLPLANE_E2E_ROOT", "/var/tmp/controlplane-e2e"))
SWARM_ROOT = Path(os.environ.get("CONTROLPLANE_SWARM_ROOT", "/var/tmp/controlplane-swarm"))
# The host id the scenarios place every node on (the default host).
SWARM_HOST_ID = "local"
KEEP = bool(os.environ.get("CONTROLPLANE_E2E_KEEP"))


class Deployment(ABC):
    """One `controlplane serve` (embedded store) with its own work directory."""

    orchestrator: str

    def __init__(self, work_dir: Path, env: dict[str, str]) -> None:
        self.work_dir = work_dir
        self.server = ServerProcess(
            work_dir / "cp",
            database_url=None,
            env={"CONTROLPLANE_ORCHESTRATOR": self.orchestrator, **env},
        )

    @property
    def instances_dir(self) -> Path:
        return self.server.data_dir / "instances"

    def repo_dir(self, name: str) -> Path:
        """A fresh posix repository base path (the same path inside containers)."""
        path = self.work_dir / f"repo-{name}"
        path.mkdir()
        give_to_os_user(path)
        return path

    def rendered_files(self, instance_id: str) -> str:
        """Every file the control plane rendered for one instance (pgbackrest.conf,
        postgresql.conf, the sealed postmaster.env, …)."""
        root = self.instances_dir / instance_id
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(root.glob("*")) if p.is_file()
        )

    @abstractmethod
    def running_nodes(self, database_id: str) -> list[str]:
        """Nodes of the database whose Postgres runs now, as the orchestrator sees them."""

    @abstractmethod
    def instance_identity(self, instance_id: str) -> str | None:
        """What changes when an instance is recreated: a postmaster pid, a container id."""

    @abstractmethod
    def lose_instance(self, instance_id: str) -> None:
        """The instance disappears without the control plane's doing (its data stays)."""

    @abstractmethod
    def restore_in_flight(self, instance_id: str) -> bool:
        """pgBackRest is restoring the instance's data right now."""

    def visible_config(self, instance_id: str) -> str:
        """What anyone able to inspect the instance can read about its configuration."""
        return self.rendered_files(instance_id)

    def stop(self) -> None:
        self.server.terminate()
        self.server.stop_instances()


class LocalDeployment(Deployment):
    """Instances are postmasters under the server's data dir."""

    orchestrator = "local"

    def _postmaster(self, instance_id: str) -> int | None:
        found = postmasters_under(self.instances_dir / instance_id / "pgdata")
        return found[0] if found else None

    def running_nodes(self, database_id: str) -> list[str]:
        prefix = f"{database_id}-"
        return sorted(
            d.name.removeprefix(prefix)
            for d in self.instances_dir.glob(f"{database_id}-*")
            if self._postmaster(d.name) is not None
        )

    def instance_identity(self, instance_id: str) -> str | None:
        pid = self._postmaster(instance_id)
        return None if pid is None else str(pid)

    def lose_instance(self, instance_id: str) -> None:
        pid = self._postmaster(instance_id)
        assert pid is not None, f"{instance_id} is not running"
        os.kill(pid, signal.SIGKILL)

    def restore_in_flight(self, instance_id: str) -> bool:
        config = str(self.instances_dir / instance_id)
        return any(
            "restore" in argv
            and any(a.endswith("pgbackrest") for a in argv)
            and any(config in a for a in argv)
            for _, argv in cmdlines()
        )


class DockerDeployment(Deployment):
    """Instances are containers on the engine at DOCKER_HOST (host networking)."""

    orchestrator = "docker"

    def __init__(self, work_dir: Path, env: dict[str, str]) -> None:
        import docker

        self.docker_url = os.environ.get("DOCKER_HOST", "")
        assert self.docker_url, "DOCKER_HOST is not set: run the docker scenarios with e2e/run"
        self.client = docker.DockerClient(base_url=self.docker_url, version="1.41")
        self.client.ping()
        image = os.environ.get("CONTROLPLANE_INSTANCE_IMAGE", "controlplane/postgres:15")
        super().__init__(
            work_dir,
            {
                "CONTROLPLANE_DOCKER_URL": self.docker_url,
                "CONTROLPLANE_INSTANCE_IMAGE": image,
                **env,
            },
        )

    def _namespace(self) -> str:
        from controlplane.orchestrator.docker_layout import LABEL, namespace_of

        return f"{LABEL}.namespace={namespace_of(self.server.data_dir.resolve())}"

    def containers(self, **labels: str) -> list[Any]:
        """This server's containers (all states), optionally filtered by more labels."""
        import docker.errors

        filters = [self._namespace(), *(f"controlplane.{k}={v}" for k, v in labels.items())]
        for _ in range(10):
            try:
                found: list[Any] = self.client.containers.list(all=True, filters={"label": filters})
            except docker.errors.NotFound:  # one went away between the list and its inspect
                continue
            return found
        raise AssertionError("containers kept disappearing while being listed")

    def running_nodes(self, database_id: str) -> list[str]:
        found = self.containers(database=database_id, role="instance")
        return sorted(c.labels["controlplane.node"] for c in found if c.status == "running")

    def instance_identity(self, instance_id: str) -> str | None:
        found = self.containers(instance=instance_id, role="instance")
        running = [c.id for c in found if c.status == "running"]
        return running[0] if running else None

    def lose_instance(self, instance_id: str) -> None:
        [container] = self.containers(instance=instance_id, role="instance")
        container.remove(force=True)

    def restore_in_flight(self, instance_id: str) -> bool:
        return bool(self.containers(instance=instance_id, role="data-one-off"))

    def visible_config(self, instance_id: str) -> str:
        inspected = [str(c.attrs["Config"]) for c in self.containers(instance=instance_id)]
        return "\n".join([self.rendered_files(instance_id), *inspected])

    def remove_containers(self) -> None:
        """Remove every container and volume this server's orchestrator made."""
        for container in self.client.containers.list(
            all=True, filters={"label": [self._namespace()]}
        ):
            container.remove(force=True)
        for volume in self.client.volumes.list(filters={"label": [self._namespace()]}):
            volume.remove(force=True)

    def stop(self) -> None:
        self.server.terminate()
        if not KEEP:  # CONTROLPLANE_E2E_KEEP=1 leaves them for a post-mortem (`e2e/run down`)
            self.remove_containers()
        self.server.stop_instances()


class SwarmDeployment(DockerDeployment):
    """Instances are single-task services on the single-node swarm of `e2e/swarm up`
    (CONTROLPLANE_SWARM_DOCKER_HOST), whose node is labelled as the host the scenarios use.
    Task containers carry the instance labels, so the container questions are asked as for
    docker; services, secrets and configs are removed at the end as well."""

    orchestrator = "swarm"

    def __init__(self, work_dir: Path, env: dict[str, str]) -> None:
        import docker

        url = os.environ.get("CONTROLPLANE_SWARM_DOCKER_HOST", "")
        assert url, "CONTROLPLANE_SWARM_DOCKER_HOST is not set: start a swarm with e2e/swarm up"
        self.docker_url = url
        self.client = docker.DockerClient(base_url=url, version="1.41")
        self.client.ping()
        self._label_node()
        image = os.environ.get("CONTROLPLANE_INSTANCE_IMAGE", "controlplane/postgres:15")
        Deployment.__init__(
            self,
            work_dir,
            {"CONTROLPLANE_SWARM_URL": url, "CONTROLPLANE_INSTANCE_IMAGE": image, **env},
        )

    def _label_node(self) -> None:
        from controlplane.orchestrator.swarm_layout import HOST_LABEL

        for node in self.client.nodes.list():
            spec = dict(node.attrs["Spec"])
            labels = dict(spec.get("Labels") or {})
            if labels.get(HOST_LABEL) != SWARM_HOST_ID:
                node.update({**spec, "Labels": {**labels, HOST_LABEL: SWARM_HOST_ID}})

    def services(self, **labels: str) -> list[Any]:
        filters = [self._namespace(), *(f"controlplane.{k}={v}" for k, v in labels.items())]
        found: list[Any] = self.client.services.list(filters={"label": filters})
        return found

    def running_nodes(self, database_id: str) -> list[str]:
        found = self.containers(database=database_id, role="instance")
        return sorted({c.labels["controlplane.node"] for c in found if c.status == "running"})

    def lose_instance(self, instance_id: str) -> None:
        found = self.containers(instance=instance_id, role="instance")
        [container] = [c for c in found if c.status == "running"]
        container.remove(force=True)

    def visible_config(self, instance_id: str) -> str:
        inspected = [str(s.attrs["Spec"]) for s in self.services(instance=instance_id)]
        return "\n".join([super().visible_config(instance_id), *inspected])

    def remove_containers(self) -> None:
        for service in self.services():
            service.remove()
        for kind in (self.client.secrets, self.client.configs):
            for item in kind.list(filters={"label": [self._namespace()]}):
                with contextlib.suppress(Exception):
                    item.remove()
        import docker.errors

        labels = {"label": [self._namespace()]}
        # The plain listing: swarm removes the tasks' containers by itself, so one listed a
        # moment ago may be gone when it is inspected or removed.
        for _ in range(100):
            if not self.client.api.containers(all=True, filters=labels):
                break
            time.sleep(0.2)
        for container in self.client.api.containers(all=True, filters=labels):
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(container["Id"], force=True)
        for volume in self.client.volumes.list(filters=labels):
            with contextlib.suppress(docker.errors.NotFound):
                volume.remove(force=True)


def work_root(orchestrator: str) -> Path:
    """Where a deployment's directories go: /tmp locally; for Docker, next to the
    engine's own state (containers bind-mount repositories and configs from there)."""
    if orchestrator in ("docker", "swarm"):
        root = (E2E_ROOT if orchestrator == "docker" else SWARM_ROOT) / "work"
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        return root
    return Path("/tmp")


def run_deployment(orchestrator: str, env: dict[str, str] | None = None) -> Iterator[Deployment]:
    """A started deployment on `orchestrator`, stopped and removed when the generator ends."""
    if orchestrator not in ORCHESTRATORS:
        raise ValueError(f"orchestrator must be one of {ORCHESTRATORS}, not {orchestrator!r}")
    work_dir = Path(tempfile.mkdtemp(prefix=f"cps-{orchestrator}-", dir=work_root(orchestrator)))
    give_to_os_user(work_dir)
    kinds: dict[str, type[Deployment]] = {"docker": DockerDeployment, "swarm": SwarmDeployment}
    found = kinds.get(orchestrator, LocalDeployment)(work_dir, env or {})
    found.server.start()
    try:
        yield found
    finally:
        found.stop()
        # Shown by pytest only when a test failed.
        print(f"---- {orchestrator} server log (tail) ----\n" + found.server.log_text()[-8000:])
        if not KEEP:
            shutil.rmtree(work_dir, ignore_errors=True)
