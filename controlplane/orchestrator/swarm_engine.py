"""The Swarm manager: nodes, pinned services, one-off jobs, secrets and configs.

Blocking docker SDK calls run in worker threads through `docker_engine.Engine.call`, so engine
failures read the same as the Docker orchestrator's. Every service is pinned to one node by its
`controlplane.host` label and runs on the host network (see swarm_layout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import docker.errors
from docker.types import (
    ConfigReference,
    ContainerSpec,
    DriverConfig,
    EndpointSpec,
    Mount,
    NetworkAttachmentConfig,
    Placement,
    Resources,
    RestartPolicy,
    SecretReference,
    ServiceMode,
    TaskTemplate,
)

from controlplane.errors import ExternalCommandError, NotFoundError
from controlplane.orchestrator import swarm_layout as layout
from controlplane.orchestrator.docker_engine import Engine
from controlplane.orchestrator.docker_layout import LineSplitter
from controlplane.system.process import CommandResult, LineSink

log = logging.getLogger(__name__)

T = TypeVar("T")
_POLL_SECONDS = 0.5
# How often a task that waits to run has its node's state looked at.
_NODE_CHECK_SECONDS = 2.0
_KEEP_LINES = 200


class SwarmEngine:
    """The manager of one swarm, reached at `url` (None: the environment's DOCKER_HOST)."""

    def __init__(self, url: str | None) -> None:
        # Only its calls are used: tasks are stopped by Swarm, within each spec's grace period.
        self._engine = Engine("swarm-manager", url, grace_seconds=0)

    @property
    def reachable(self) -> bool | None:
        return self._engine.reachable

    async def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run `fn(client)` in a worker thread; engine failures become ExternalCommandError."""
        return await self._engine.call(what, fn)

    # -- nodes -----------------------------------------------------------------------------
    async def nodes(self) -> list[layout.SwarmNode]:
        """Every node of the swarm with its availability, state and labels."""
        found = await self.call("listing swarm nodes", lambda client: client.api.nodes())
        return [layout.read_node(attrs) for attrs in found]

    async def label_node(self, node_id: str, host_id: str) -> None:
        """Make a node the host `host_id` (its `controlplane.host` label); other labels stay."""

        def label(client: Any) -> None:
            attrs = client.api.inspect_node(node_id)
            spec = dict(attrs["Spec"])
            spec["Labels"] = {**(spec.get("Labels") or {}), layout.HOST_LABEL: host_id}
            client.api.update_node(node_id, attrs["Version"]["Index"], spec)

        await self.call(f"labelling swarm node {node_id} as host {host_id}", label)

    # -- secrets and configs ---------------------------------------------------------------
    async def ensure_secret(self, base: str, data: bytes, labels: Mapping[str, str]) -> str:
        """The name of a secret holding `data`, created when missing (`<base>-<hash>`)."""
        return await self._ensure_object("secret", base, data, labels)

    async def ensure_config(self, base: str, data: bytes, labels: Mapping[str, str]) -> str:
        """The name of a config holding `data`, created when missing (`<base>-<hash>`)."""
        return await self._ensure_object("config", base, data, labels)

    async def _ensure_object(
        self, kind: str, base: str, data: bytes, labels: Mapping[str, str]
    ) -> str:
        name = layout.object_name(base, data)
        all_labels = layout.object_labels(base, labels)

        def ensure(client: Any) -> None:
            listing = client.api.secrets if kind == "secret" else client.api.configs
            create = client.api.create_secret if kind == "secret" else client.api.create_config
            # The name filter matches prefixes: compare exactly.
            if any(o["Spec"]["Name"] == name for o in listing(filters={"name": name})):
                return
            try:
                create(name=name, data=data, labels=all_labels)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # made meanwhile by another caller
                    raise

        await self.call(f"creating {kind} {name}", ensure)
        return name

    async def remove_unused(self, kind: str, base: str, keep: set[str] | None = None) -> list[str]:
        """Remove the versions of object `base` (kind `secret` or `config`) that no service
        mounts, except `keep`; the names removed."""
        spared = keep or set()

        def remove(client: Any) -> list[str]:
            listing = client.api.secrets if kind == "secret" else client.api.configs
            drop = client.api.remove_secret if kind == "secret" else client.api.remove_config
            found = listing(filters={"label": [f"{layout.OBJECT_LABEL}={base}"]})
            secrets, configs = layout.referenced_objects(client.api.services())
            used = (secrets if kind == "secret" else configs) | spared
            removed = []
            for item in found:
                if item["Spec"]["Name"] in used:
                    continue
                try:
                    drop(item["ID"])
                except docker.errors.NotFound:
                    continue
                except docker.errors.APIError as exc:
                    if exc.status_code == 400 and "in use" in str(exc.explanation):
                        continue  # a service started using it meanwhile
                    raise
                removed.append(str(item["Spec"]["Name"]))
            return removed

        return await self.call(f"removing unused {kind}s of {base}", remove)

    # -- services --------------------------------------------------------------------------
    async def apply_service(self, spec: layout.ServiceSpec) -> None:
        """Create the service, or update it to `spec` (its task is replaced when it changed)."""

        def apply(client: Any) -> None:
            kwargs = _service_kwargs(client, spec, ServiceMode("replicated", replicas=1))
            try:
                current = client.api.inspect_service(spec.name)
            except docker.errors.NotFound:
                client.api.create_service(name=spec.name, **kwargs)
                return
            client.api.update_service(
                current["ID"], current["Version"]["Index"], name=spec.name, **kwargs
            )

        await self.call(f"applying service {spec.name}", apply)

    async def inspect_service(self, name: str) -> dict[str, Any] | None:
        """A service's attributes, or None when there is none."""

        def inspect(client: Any) -> dict[str, Any] | None:
            try:
                attrs: dict[str, Any] = client.api.inspect_service(name)
            except docker.errors.NotFound:
                return None
            return attrs

        return await self.call(f"inspecting service {name}", inspect)

    async def remove_service(self, name: str) -> None:
        """Remove a service (its task is stopped); a missing one is not an error."""

        def remove(client: Any) -> None:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_service(name)

        await self.call(f"removing service {name}", remove)

    async def task(self, name: str) -> layout.TaskReading | None:
        """The newest task of a service, or None when it has none (yet)."""
        tasks = await self.call(
            f"listing the tasks of service {name}",
            lambda client: client.api.tasks(filters={"service": name}),
        )
        return layout.latest_task(tasks)

    async def wait_running(self, spec: layout.ServiceSpec, within: float) -> layout.TaskReading:
        """Wait for the service's task to run; its error text when it fails, NotFoundError
        when no node carries the host label it is pinned to. While the task waits, the host's
        node is looked at every few seconds: a node lost after the task was assigned to it (a
        daemon shutting down) fails the start as soon as the manager sees the node down,
        rather than when `within` runs out."""
        deadline = time.monotonic() + within
        reading: layout.TaskReading | None = None
        node_checked = time.monotonic()
        while time.monotonic() < deadline:
            reading = await self.task(spec.name)
            if reading is not None and reading.state == "running":
                return reading
            if reading is not None and reading.state in ("failed", "rejected"):
                raise ExternalCommandError(
                    f"service {spec.name} on host {spec.host_id} failed to start: "
                    f"{reading.error or reading.state}"
                )
            if reading is not None and layout.NO_SUITABLE_NODE in reading.error:
                await self._check_host(spec.host_id, spec.name, reading.error)
            elif time.monotonic() - node_checked >= _NODE_CHECK_SECONDS:
                node_checked = time.monotonic()
                state = f"task {reading.state}" if reading else "no task yet"
                await self._check_host(spec.host_id, spec.name, state)
            await asyncio.sleep(_POLL_SECONDS)
        state = f"{reading.state}: {reading.error}" if reading else "no task"
        raise ExternalCommandError(
            f"service {spec.name} on host {spec.host_id} did not start in {within:.0f} s ({state})",
            retryable=True,
        )

    async def _check_host(self, host_id: str, name: str, error: str) -> None:
        """A task Swarm cannot place or has not started: fail at once when no node is the
        host, or when the host's node is not ready (it would wait until the node is back)."""
        nodes = [node for node in await self.nodes() if node.host_id == host_id]
        if not nodes:
            raise NotFoundError(
                f"service {name} cannot be placed: no swarm node is host {host_id} "
                f"(no node has the label {layout.HOST_LABEL}={host_id}; swarm says: {error})"
            )
        if all(layout.node_state(node) == layout.UNREACHABLE for node in nodes):
            raise ExternalCommandError(
                f"service {name} cannot be placed: host {host_id} is unreachable (its swarm "
                f"node is {nodes[0].state or 'unknown'}; swarm says: {error})",
                retryable=True,
            )

    async def logs(self, name: str) -> list[str]:
        """A service's output so far (stdout and stderr), one string per line."""

        def read(client: Any) -> list[str]:
            chunks = client.api.service_logs(name, stdout=True, stderr=True, is_tty=False)
            splitter = LineSplitter()
            lines = [line for chunk in chunks for line in splitter.feed(chunk)]
            return lines + splitter.flush()

        return await self.call(f"reading the log of service {name}", read)

    async def remove_services(self, label_filters: list[str]) -> list[str]:
        """Remove every service carrying all the labels (`key=value`); their names."""

        def remove(client: Any) -> list[str]:
            found = client.api.services(filters={"label": label_filters})
            for item in found:
                with contextlib.suppress(docker.errors.NotFound):
                    client.api.remove_service(item["ID"])
            return [str(item["Spec"]["Name"]) for item in found]

        return await self.call("removing services", remove)

    # -- one-off jobs ----------------------------------------------------------------------
    async def run_job(
        self, spec: layout.ServiceSpec, within: float, *, on_line: LineSink | None = None
    ) -> CommandResult:
        """Run `spec` once on its host (one replica, restart condition none), then remove it:
        its exit code and the last lines of its output (passed to `on_line` once it ended).

        Not a `replicated-job` service: on engine 20.10 removing one leaves its completed task
        and container behind (moby/moby#42789, #44312), and the container keeps the volume.

        A cancelled caller removes the job, which stops its task (SIGTERM, then SIGKILL after
        the stop grace period)."""
        what = f"job {spec.name} on host {spec.host_id}"

        def create(client: Any) -> None:
            kwargs = _service_kwargs(client, spec, ServiceMode("replicated", replicas=1), once=True)
            client.api.create_service(name=spec.name, **kwargs)

        try:
            await self.call(f"creating {what}", create)
            reading = await self._wait_ended(spec, within)
            lines = await self.logs(spec.name)
        finally:
            await asyncio.shield(self._remove_quietly(spec.name))
        if reading.exit_code is None:
            raise ExternalCommandError(
                f"{what} ended without an exit code ({reading.state}: {reading.error})"
            )
        for line in lines:
            if on_line is not None:
                await on_line(line)
        return CommandResult(reading.exit_code, lines[-_KEEP_LINES:])

    async def _wait_ended(self, spec: layout.ServiceSpec, within: float) -> layout.TaskReading:
        deadline = time.monotonic() + within
        reading: layout.TaskReading | None = None
        while time.monotonic() < deadline:
            reading = await self.task(spec.name)
            if reading is not None and reading.state in layout.TERMINAL_TASK_STATES:
                return reading
            if reading is not None and layout.NO_SUITABLE_NODE in reading.error:
                await self._check_host(spec.host_id, spec.name, reading.error)
            await asyncio.sleep(_POLL_SECONDS)
        state = f"{reading.state}: {reading.error}" if reading else "no task"
        raise ExternalCommandError(
            f"job {spec.name} on host {spec.host_id} did not end in {within:.0f} s ({state})"
        )

    async def _remove_quietly(self, name: str) -> None:
        try:
            await self.remove_service(name)
        except ExternalCommandError as exc:
            log.warning("%s", exc.message)

    # -- volumes ---------------------------------------------------------------------------
    async def remove_volume(self, name: str) -> None:
        """Remove a named volume of the manager's own node (the Swarm API reaches no other
        node's volumes)."""

        def remove(client: Any) -> None:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_volume(name, force=True)

        await self.call(f"removing volume {name}", remove)


def _service_kwargs(
    client: Any, spec: layout.ServiceSpec, mode: ServiceMode, *, once: bool = False
) -> dict[str, Any]:
    """`create_service`/`update_service` arguments: pinned, host network, volume, files."""
    secret_ids = _ids(client.api.secrets, [ref.name for ref in spec.secrets])
    config_ids = _ids(client.api.configs, [ref.name for ref in spec.configs])
    mounts = []
    if spec.volume:
        mounts.append(
            Mount(
                target=spec.volume_target,
                source=spec.volume,
                type="volume",
                labels={layout.LABEL: "", layout.HOST_LABEL: spec.host_id},
                driver_config=DriverConfig("local"),
            )
        )
    mounts += [
        Mount(target=b.target, source=b.source, type="bind", read_only=b.read_only)
        for b in spec.binds
    ]
    container = ContainerSpec(
        image=spec.image,
        command=spec.command,
        user=spec.user or None,
        env=[f"{k}={v}" for k, v in spec.env.items()] or None,
        mounts=mounts,
        labels=layout.service_labels(spec),
        secrets=[
            SecretReference(secret_ids[r.name], r.name, r.target, r.uid, r.gid, r.mode)
            for r in spec.secrets
        ],
        configs=[
            ConfigReference(config_ids[r.name], r.name, r.target, r.uid, r.gid, r.mode)
            for r in spec.configs
        ],
        stop_grace_period=int(spec.stop_grace_seconds * 1e9),
        stop_signal=spec.stop_signal or None,
    )
    template = TaskTemplate(
        container_spec=container,
        resources=Resources(cpu_limit=spec.nano_cpus or None, mem_limit=spec.memory or None),
        restart_policy=RestartPolicy(condition="none" if once else spec.restart),
        placement=Placement(constraints=[layout.placement_constraint(spec.host_id)]),
        networks=[NetworkAttachmentConfig("host")],
    )
    return {
        "task_template": template,
        "labels": layout.service_labels(spec),
        "mode": mode,
        # Host networking publishes nothing; `dnsrr` keeps Swarm from allocating a VIP.
        "endpoint_spec": EndpointSpec(mode="dnsrr"),
    }


def _ids(listing: Callable[..., list[dict[str, Any]]], names: list[str]) -> dict[str, str]:
    """Object ids by name; a missing object is an error naming it."""
    if not names:
        return {}
    found = {str(o["Spec"]["Name"]): str(o["ID"]) for o in listing(filters={"name": names})}
    missing = [name for name in names if name not in found]
    if missing:
        raise NotFoundError(f"swarm object {', '.join(missing)} does not exist")
    return found
