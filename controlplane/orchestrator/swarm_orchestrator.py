"""Swarm orchestrator: each instance is a Swarm service with one task, pinned to its host.

A host is a swarm node labelled `controlplane.host=<host_id>` (a spec's `host_ids` are those
labels); an instance's service is pinned to it by a placement constraint, runs on the host
network with its own port and keeps its data in a named volume on that node. Everything else is
the Docker orchestrator's layout (`docker_layout`), which this class inherits: the same instance
directory, mounts, argv and workflows, with tasks where it has containers.

- The instance directory (postgresql.conf, pg_hba.conf, pgbackrest.conf …) is bind-mounted from
  the node, not carried by Swarm configs: the workflows rewrite these files while Postgres runs
  and then reload it (a spec change, fencing clients for an in-place restore) or run pgBackRest
  with a restore-source config written a moment before. A Swarm config is immutable and reaches
  a task only when the task is created, so each such change would replace the task, i.e.
  restart Postgres. The instance directory therefore lives on the node (one machine, or a
  filesystem every node mounts at the same path).
- The repository secrets Postgres needs (archive_command, restore_command) are a Swarm secret,
  `/run/secrets/controlplane-postmaster-env` inside the task only: the task opens it on
  descriptor 9 for Postgres (see instance_secrets), so it is neither in the service spec nor in
  the container's environment. A new secret object is made when they change; old ones are
  removed once no service uses them. One-off jobs get the secrets their command needs the same
  way (`/run/secrets/controlplane-job-env`, sourced into the job's own process only).
- A member of a node with replicas is a service running Patroni (docker_layout's argv), with
  the same Swarm secret on descriptor 9: Patroni hands it to the Postgres it starts. Its etcd
  must be one every node reaches (`CONTROLPLANE_ETCD_HOSTS`, or the embedded one on a
  single-node swarm advertised on loopback).
- Stopping signals the task's container (SIGINT: fast shutdown, then SIGQUIT) and leaves the
  ended task for its log; the restart condition is `none` (restarting is the monitor's job). A
  start replaces the service. `exec` runs in the running task's container through the engine
  of the node: the one `CONTROLPLANE_DOCKER_HOSTS` gives for the host (`h1=unix:///…,h2=…`),
  else the manager's (a single-node swarm); the node's engine also holds its volumes. A
  stopped instance's commands run as one-off jobs pinned to its node, which remove themselves
  when they end.
- Addresses: a host's instances listen on its node's address (`Status.Addr`, what the node
  advertises to the swarm) and are reached there, by clients, the control plane and the other
  nodes' replication links; pg_hba.conf admits every node's address and this machine's own
  toward them. On a single-node swarm advertised on 127.0.0.1 that is loopback, as on Docker.
- A node the manager does not hear from (down, disconnected) is an `unreachable` host: the
  status and start of its instances fail at once instead of waiting for a task Swarm cannot
  place, and its instances are started again once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import docker
import docker.errors

from controlplane.errors import ExternalCommandError, PreconditionError
from controlplane.models import Host
from controlplane.orchestrator import docker_layout
from controlplane.orchestrator import instance_secrets as staged
from controlplane.orchestrator import swarm_layout as layout
from controlplane.orchestrator.base import InstanceRef, InstanceStatus
from controlplane.orchestrator.docker_engine import API_VERSION, ContainerSpec, Engine, running
from controlplane.orchestrator.docker_orchestrator import DockerOrchestrator, load_docker_hosts
from controlplane.orchestrator.swarm_engine import SwarmEngine
from controlplane.settings import Settings
from controlplane.system.process import CommandResult, LineSink

log = logging.getLogger(__name__)

DEFAULT_HOST_ID = "local"
POSTMASTER_SECRET = staged.SWARM_SECRET_FILE.rsplit("/", 1)[1]
JOB_SECRET = "controlplane-job-env"
# Longest a one-off job (a restore) may run before it is given up.
_JOB_SECONDS = 24 * 3600.0
_START_SECONDS = 300.0
_HOSTS_CACHE_SECONDS = 2.0
# The postmaster task's command: the postmaster secret on descriptor 9, then Postgres (the
# secret mount is read-only: it is left in place, readable by the OS user only).
_RUN_SCRIPT = f"""\
if [ -f "$0" ]; then exec {staged.SECRETS_FD}<"$0"; fi
exec "$@"
"""
# A job's command: the secrets its command needs, in its own environment only.
_JOB_SCRIPT = '. "$0" && exec "$@"'


def _secret_path(target: str) -> str:
    return f"{layout.SECRETS_DIR}/{target}"


def secret_argv(argv: Sequence[str]) -> list[str]:
    """A Docker layout command (Postgres's or Patroni's, which take their staged secrets file
    first) with the postmaster's Swarm secret in place of that file, opened on descriptor 9
    and left in place."""
    staged_prefix = ["sh", "-c", docker_layout.RUN_SCRIPT, staged.CONTAINER_SECRETS_FILE]
    if list(argv[:4]) != staged_prefix:
        raise ValueError(f"not a command of the Docker layout: {list(argv[:4])}")
    return ["sh", "-c", _RUN_SCRIPT, _secret_path(POSTMASTER_SECRET), *argv[4:]]


def source_address(address: str) -> str | None:
    """This machine's own address toward `address` (the one its connections there come from):
    a UDP socket's local address once connected, which sends nothing."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


class SwarmTasks(Engine):
    """The Docker orchestrator's engine calls on Swarm: a "container" is a service's task.

    Container-level calls (signals, exec, volumes) go to the engine at `url`: the engine of the
    host's node when one is configured for it, else the manager's (a single-node swarm)."""

    def __init__(
        self,
        swarm: SwarmEngine,
        url: str | None,
        *,
        grace_seconds: float,
        host_id: str = "swarm",
        node_engine: bool = False,
    ) -> None:
        super().__init__(host_id, url, grace_seconds=grace_seconds)
        self.swarm = swarm
        self.owner = "0:0"
        # True when `url` is the engine of the host's own node: it has the task's container.
        self.node_engine = node_engine

    async def inspect(self, name: str) -> dict[str, Any] | None:
        """The service's newest task as container attributes (running, mounts, labels)."""
        service = await self.swarm.inspect_service(name)
        if service is None:
            return None
        task = await self.swarm.task(name)
        spec = service["Spec"]["TaskTemplate"]["ContainerSpec"]
        return {
            "Id": task.container_id if task else None,
            "State": {"Running": await self._task_running(task)},
            "Mounts": [
                {"Destination": m["Target"], "RW": not m.get("ReadOnly", False)}
                for m in spec.get("Mounts") or []
            ],
            "Config": {"Labels": dict(spec.get("Labels") or {})},
        }

    async def _task_running(self, task: layout.TaskReading | None) -> bool:
        """The task runs as the manager sees it and, asked of the node's own engine when there
        is one, its container runs: a node back from an outage is shown with the task it had
        until its engine reports the container gone."""
        if task is None or task.state != "running":
            return False
        if not self.node_engine or task.container_id is None:
            return True
        return running(await super().inspect(task.container_id))

    async def _container(self, name: str) -> str | None:
        task = await self.swarm.task(name)
        if task is None or task.state != "running":
            return None
        return task.container_id

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        await super().create_volume(name, {**labels, layout.LABEL: ""})

    async def kill(self, name: str, sig: str) -> None:
        container = await self._container(name)
        if container is not None:
            await super().kill(container, sig)

    async def log_tail(self, name: str, count: int = 5) -> str:
        try:
            lines = await self.swarm.logs(name)
        except ExternalCommandError as exc:
            return exc.message
        return " | ".join(lines[-count:]) if lines else "(no output)"

    async def exec(
        self,
        container: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_line: LineSink | None = None,
        cancellable: bool = True,
    ) -> CommandResult:
        found = await self._container(container)
        if found is None:
            raise ExternalCommandError(f"service {container} has no running task", retryable=True)
        return await super().exec(found, argv, env=env, on_line=on_line, cancellable=cancellable)

    async def remove_containers(self, label_filters: list[str]) -> list[str]:
        """Remove the services (instances and jobs) carrying the labels, and wait until their
        tasks' containers are gone (they hold the data volume)."""
        removed = await self.swarm.remove_services(label_filters)
        await self._wait_gone(label_filters)
        return removed

    async def _wait_gone(self, label_filters: list[str], within: float = 60.0) -> None:
        deadline = time.monotonic() + within

        def left(client: Any) -> int:
            return len(client.api.containers(all=True, filters={"label": label_filters}))

        while time.monotonic() < deadline:
            if not await self.call("listing task containers", left):
                return
            await asyncio.sleep(0.2)
        log.warning("task containers of %s still there after %.0f s", label_filters, within)

    async def replace_service(self, spec: layout.ServiceSpec) -> None:
        """Remove the service of that name (and its task's container), create it anew and
        wait until its task runs."""
        await self.swarm.remove_service(spec.name)
        await self._wait_gone([f"com.docker.swarm.service.name={spec.name}"])
        await self.swarm.apply_service(spec)
        await self.swarm.wait_running(spec, _START_SECONDS)

    async def run_service(self, name: str, spec: ContainerSpec, *, stop_signal: str) -> None:
        await self.replace_service(self.service_spec(name, spec, stop_signal=stop_signal))

    def service_spec(
        self,
        name: str,
        spec: ContainerSpec,
        *,
        command: Sequence[str] | None = None,
        secrets: Sequence[layout.FileRef] = (),
        stop_signal: str = "",
        restart: layout.RestartCondition = "none",
    ) -> layout.ServiceSpec:
        """A container spec of the Docker layout as a service pinned to its host label."""
        host_id = spec.labels.get(layout.HOST_LABEL, DEFAULT_HOST_ID)
        volumes = [m for m in spec.mounts if m.kind == "volume"]
        return layout.ServiceSpec(
            name=name,
            host_id=host_id,
            image=spec.image,
            command=[*docker_layout.ENTRYPOINT, *(spec.command if command is None else command)],
            labels=spec.labels,
            user="postgres",
            volume=volumes[0].source if volumes else "",
            volume_target=volumes[0].target if volumes else "",
            binds=[
                layout.BindRef(source=m.source, target=m.target, read_only=m.read_only)
                for m in spec.mounts
                if m.kind == "bind"
            ],
            secrets=list(secrets),
            nano_cpus=spec.nano_cpus,
            memory=spec.mem_limit,
            restart=restart,
            stop_grace_seconds=120.0,
            stop_signal=stop_signal,
        )

    async def run_one_off(
        self, name: str, spec: ContainerSpec, *, on_line: LineSink | None = None
    ) -> CommandResult:
        """A one-off job pinned to the instance's node; its environment (repository secrets)
        comes in a Swarm secret, never in the service spec."""
        secrets: list[layout.FileRef] = []
        command = list(spec.command)
        base = f"{name}-env"
        if spec.environment:
            data = staged.export_lines(spec.environment).encode()
            secret = await self.swarm.ensure_secret(base, data, {})
            uid, gid = self.owner.split(":")
            secrets.append(
                layout.FileRef(name=secret, target=JOB_SECRET, uid=uid, gid=gid, mode=0o400)
            )
            command = ["sh", "-c", _JOB_SCRIPT, _secret_path(JOB_SECRET), *command]
        job = self.service_spec(name, spec, command=command, secrets=secrets)
        try:
            return await self.swarm.run_job(job, _JOB_SECONDS, on_line=on_line)
        finally:
            if secrets:
                await asyncio.shield(self.swarm.remove_unused("secret", base))


class SwarmOrchestrator(DockerOrchestrator):
    """Instances are single-task services on the swarm's labelled nodes; see the module
    docstring."""

    name = "swarm"

    def __init__(self, settings: Settings) -> None:
        url = settings.swarm_url
        super().__init__(settings, hosts={DEFAULT_HOST_ID: url})
        self._url = url
        self._swarm = SwarmEngine(url)
        self._tasks = self._new_tasks("swarm", url)
        # The engines of the nodes by host id (CONTROLPLANE_DOCKER_HOSTS), for what only a
        # node's own engine reaches: its containers (exec, signals) and its volumes.
        self._node_urls = (
            load_docker_hosts(settings.docker_hosts, default_url=url)
            if settings.docker_hosts
            else {}
        )
        self._node_tasks: dict[str, SwarmTasks] = {}
        self._client: Any = None
        self._hosts: list[Host] = []
        self._hosts_at = 0.0
        # Each host's node address as last seen (kept while the manager does not answer).
        self._addresses: dict[str, str] = {}
        self._node_states: dict[str, str] = {}

    def _new_tasks(self, host_id: str, url: str | None, *, node: bool = False) -> SwarmTasks:
        tasks = SwarmTasks(
            self._swarm,
            url,
            grace_seconds=self._settings.cancel_grace_seconds,
            host_id=host_id,
            node_engine=node,
        )
        tasks.owner = self._files.owner_ids()
        return tasks

    # -- placement -------------------------------------------------------------------------
    def _nodes_client(self) -> Any:
        if self._client is None:
            if self._url:
                self._client = docker.DockerClient(
                    base_url=self._url, version=API_VERSION, timeout=10
                )
            else:
                self._client = docker.from_env(version=API_VERSION, timeout=10)
        return self._client

    def hosts(self) -> list[Host]:
        """The swarm's labelled nodes with their availability (read at most every 2 s); the
        last known ones as `unreachable` when the manager does not answer."""
        now = time.monotonic()
        if self._hosts and now - self._hosts_at < _HOSTS_CACHE_SECONDS:
            return self._hosts
        try:
            nodes = [layout.read_node(n) for n in self._nodes_client().api.nodes()]
        except (docker.errors.DockerException, OSError) as exc:
            log.warning("swarm manager unreachable: %s", exc)
            return [Host(id=h.id, orchestrator=self.name, state="unreachable") for h in self._hosts]
        for node in nodes:
            if node.host_id:
                self._node_states[node.host_id] = node.state
                if node.addr:
                    self._addresses[node.host_id] = node.addr
        self._hosts = layout.hosts(nodes)
        self._hosts_at = now
        return self._hosts

    def address(self, host_id: str) -> str:
        """The address of the host's node (its `Status.Addr`, as it advertises itself to the
        swarm): the host network its instances listen on, where clients and the other nodes
        reach them. The last one seen while the manager does not answer."""
        self.hosts()
        found = self._addresses.get(host_id)
        if found is None:
            raise PreconditionError(
                f"host {host_id} is not a swarm node (no node has the label "
                f"{layout.HOST_LABEL}={host_id}, or the manager does not answer)"
            )
        return found

    def _host_rules(self, ref: InstanceRef) -> str:
        """Loopback, and every node's address with this machine's own toward it: instances on
        other nodes (replication links) and the control plane connect from there."""
        self.hosts()
        nodes = [a for a in self._addresses.values() if not a.startswith("127.")]
        own = [a for a in (source_address(n) for n in nodes) if a is not None]
        return layout.node_hba(docker_layout.HBA, [*nodes, *own])

    def _refuse_unreachable(self, ref: InstanceRef, what: str) -> None:
        """Fail at once for an instance whose node the manager does not hear from: its task
        cannot be reached, and a new one would wait for the node to come back."""
        host = next((h for h in self.hosts() if h.id == ref.host_id), None)
        if host is not None and host.state == layout.UNREACHABLE:
            node = self._node_states.get(ref.host_id) or "not answering"
            raise ExternalCommandError(
                f"{what} of instance {ref.instance_id} failed: host {ref.host_id} is "
                f"unreachable (its swarm node is {node})",
                retryable=True,
            )

    def default_host(self) -> str:
        found = self.hosts()
        return found[0].id if found else DEFAULT_HOST_ID

    def _engine(self, ref: InstanceRef) -> Engine:
        return self._tasks_of(ref.host_id)

    def _tasks_of(self, host_id: str) -> SwarmTasks:
        """The host's node engine when one is configured, else the manager's."""
        url = self._node_urls.get(host_id)
        if url is None:
            return self._tasks
        found = self._node_tasks.get(host_id)
        if found is None:
            found = self._node_tasks[host_id] = self._new_tasks(host_id, url, node=True)
        return found

    async def status(self, ref: InstanceRef) -> InstanceStatus:
        await asyncio.to_thread(self._refuse_unreachable, ref, "reading the status")
        return await super().status(ref)

    # -- files -----------------------------------------------------------------------------
    def _postmaster_secret_base(self, ref: InstanceRef) -> str:
        return f"{self._name(ref)}-env"

    async def _postmaster_secret(self, ref: InstanceRef) -> layout.FileRef:
        """The instance's repository secrets as a Swarm secret (a new object when they
        changed), readable by the OS user only."""
        env = await asyncio.to_thread(staged.unsealed, self._box, self._dir(ref) / staged.ENV_FILE)
        data = staged.export_lines(env).encode()
        name = await self._swarm.ensure_secret(
            self._postmaster_secret_base(ref),
            data,
            docker_layout.labels(ref, self._namespace, "secret"),
        )
        uid, gid = self._files.owner_ids().split(":")
        return layout.FileRef(name=name, target=POSTMASTER_SECRET, uid=uid, gid=gid, mode=0o400)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(
        self, ref: InstanceRef, *, on_line: LineSink, options: Mapping[str, str] | None = None
    ) -> None:
        """Replace the instance's service by a new one on its volume, wait until Postgres
        accepts writes, then make sure the superuser answers to this database's password."""
        await asyncio.to_thread(self._refuse_unreachable, ref, "the start")
        if ref.supervisor == "patroni":
            await self._start_patroni(ref, role=None, on_line=on_line)
            return
        extra = docker_layout.check_start_options(options)
        tasks = self._tasks_of(ref.host_id)
        container = self._options(ref)
        image = self._image_of(container)
        digest = docker_layout.options_digest(image, container)
        name = self._name(ref)
        current = await tasks.inspect(name)
        if current is not None and running(current) and self._made_with(current) != digest:
            await on_line(f"service {name}: recreating it with new container options")
            await self.stop(ref, on_line=on_line)
            current = None
        if not running(current):
            await self._reap(ref)
            if not await tasks.volume_exists(self._volume(ref)):
                raise ExternalCommandError(
                    f"start of instance {ref.instance_id} failed: its data volume "
                    f"{self._volume(ref)} is missing"
                )
            self._ensure_dirs(ref)
            mounts = await asyncio.to_thread(self._mounts, ref, with_data=True)
            secret = await self._postmaster_secret(ref)
            own = {
                **self._labels(ref, docker_layout.ROLE_INSTANCE),
                docker_layout.OPTIONS_LABEL: digest,
            }
            argv = docker_layout.postgres_argv(str(self._dir(ref)), extra)
            command = secret_argv(argv)
            spec = ContainerSpec(
                image=image,
                command=command,
                labels=docker_layout.container_labels(own, container),
                mounts=sorted(mounts),
                nano_cpus=container.nano_cpus,
                mem_limit=container.memory_bytes,
            )
            service = tasks.service_spec(name, spec, secrets=[secret], stop_signal="SIGINT")
            await tasks.replace_service(service)
            await on_line(f"service {name} started" + (f" with {' '.join(extra)}" if extra else ""))
            await self._wait_writable(ref)
            await self._forget_secrets(ref, keep={secret.name})
        else:
            await self._wait_writable(ref)
        await self._ensure_password(ref)

    async def _run_patroni(
        self, ref: InstanceRef, spec: ContainerSpec, *, on_line: LineSink
    ) -> None:
        """The member's service on its host's node: Patroni gets the repository secrets on
        descriptor 9 from the Swarm secret, as Postgres itself does, and hands them to the
        Postgres it starts (see local_patroni.postgres_wrapper). SIGTERM stops it: Patroni
        stops its Postgres, and a leader hands its lock over first."""
        await asyncio.to_thread(self._refuse_unreachable, ref, "the start")
        secret = await self._postmaster_secret(ref)
        spec.command = secret_argv(spec.command)
        tasks, name = self._tasks_of(ref.host_id), self._name(ref)
        service = tasks.service_spec(name, spec, secrets=[secret], stop_signal="SIGTERM")
        await tasks.replace_service(service)
        await on_line(f"service {name} started (patroni)")
        await self._forget_secrets(ref, keep={secret.name})

    async def _forget_secrets(self, ref: InstanceRef, keep: set[str] | None = None) -> None:
        try:
            await self._swarm.remove_unused("secret", self._postmaster_secret_base(ref), keep)
        except ExternalCommandError as exc:
            log.warning("instance %s: %s", ref.instance_id, exc.message)

    async def remove_instance(self, ref: InstanceRef, *, on_line: LineSink) -> None:
        await super().remove_instance(ref, on_line=on_line)
        await self._forget_secrets(ref)
