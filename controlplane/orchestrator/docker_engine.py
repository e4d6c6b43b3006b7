"""One Docker engine: blocking SDK calls in worker threads, failures in words, streamed output.

The docker SDK is blocking; this module and `docker_orchestrator.py` are the only ones that call
it, always through `asyncio.to_thread`. Output of exec'd commands and one-off containers is read
in a worker thread and handed line by line to the caller's sink on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import docker
import docker.errors
from docker.types import LogConfig, Mount

from controlplane.errors import ExternalCommandError
from controlplane.orchestrator import docker_layout as layout
from controlplane.system.process import CommandResult, LineSink

log = logging.getLogger(__name__)

# Pinned so that making a client does no version round trip (engines ≥ 20.10 speak it).
API_VERSION = "1.41"
_API_TIMEOUT = 60
_KEEP_LINES = 200
_SHM_SIZE = "256m"  # Docker's 64 MB /dev/shm is too small for parallel query's segments
T = TypeVar("T")
Interrupt = Callable[[str], Awaitable[None]]


class ContainerSpec:
    """What to run in a container: image, argv, labels, mounts, environment, and the CPU and
    memory limits (0: none)."""

    def __init__(
        self,
        *,
        image: str,
        command: Sequence[str],
        labels: Mapping[str, str],
        mounts: Sequence[layout.MountSpec],
        environment: Mapping[str, str] | None = None,
        nano_cpus: int = 0,
        mem_limit: int = 0,
    ) -> None:
        self.image = image
        self.command = list(command)
        self.labels = dict(labels)
        self.mounts = list(mounts)
        self.environment = dict(environment or {})
        self.nano_cpus = nano_cpus
        self.mem_limit = mem_limit

    def create_kwargs(self, name: str) -> dict[str, Any]:
        """`containers.create` arguments shared by instance and one-off containers: host
        network, the image's `postgres` user, tini as PID 1."""
        return {
            "command": self.command,
            "entrypoint": layout.ENTRYPOINT,
            "name": name,
            "labels": self.labels,
            "user": "postgres",
            "network_mode": "host",
            "environment": self.environment,
            "mounts": [
                Mount(target=m.target, source=m.source, type=m.kind, read_only=m.read_only)
                for m in self.mounts
            ],
            "detach": True,
            **({"nano_cpus": self.nano_cpus} if self.nano_cpus else {}),
            **({"mem_limit": self.mem_limit} if self.mem_limit else {}),
        }


class Engine:
    """One engine (a host). Its client is made on first use, inside a worker thread."""

    def __init__(self, host_id: str, url: str | None, *, grace_seconds: float) -> None:
        self.host_id = host_id
        self.url = url
        self.reachable: bool | None = None
        self._grace = grace_seconds
        self._client: Any = None

    def _get_client(self) -> Any:
        if self._client is None:
            if self.url:
                self._client = docker.DockerClient(
                    base_url=self.url, version=API_VERSION, timeout=_API_TIMEOUT
                )
            else:
                self._client = docker.from_env(version=API_VERSION, timeout=_API_TIMEOUT)
        return self._client

    async def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run `fn(client)` in a worker thread; engine failures become ExternalCommandError."""

        def call() -> T:
            return fn(self._get_client())

        try:
            result = await asyncio.to_thread(call)
        except docker.errors.ImageNotFound as exc:
            raise ExternalCommandError(
                f"{what} failed: {exc.explanation or exc} on host {self.host_id} "
                "(build the image from compose/Dockerfile.postgres)"
            ) from exc
        except docker.errors.APIError as exc:
            self.reachable = True
            raise ExternalCommandError(f"{what} failed: {exc.explanation or exc}") from exc
        except (OSError, docker.errors.DockerException) as exc:
            # requests' connection errors are OSErrors; DockerException covers a bad URL.
            self.reachable = False
            raise ExternalCommandError(
                f"{what} failed: the docker engine of host {self.host_id} is unreachable: {exc}",
                retryable=True,
            ) from exc
        self.reachable = True
        return result

    # -- objects ---------------------------------------------------------------------------
    async def inspect(self, name: str) -> dict[str, Any] | None:
        """A container's attributes, or None when there is none."""

        def inspect(client: Any) -> dict[str, Any] | None:
            try:
                attrs: dict[str, Any] = client.api.inspect_container(name)
            except docker.errors.NotFound:
                return None
            return attrs

        return await self.call(f"inspecting container {name}", inspect)

    async def volume_exists(self, name: str) -> bool:
        def exists(client: Any) -> bool:
            try:
                client.api.inspect_volume(name)
            except docker.errors.NotFound:
                return False
            return True

        return await self.call(f"inspecting volume {name}", exists)

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        """Create the volume (a no-op when it exists)."""
        await self.call(
            f"creating volume {name}",
            lambda client: client.api.create_volume(name=name, labels=dict(labels)),
        )

    async def remove_volume(self, name: str) -> None:
        def remove(client: Any) -> None:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_volume(name, force=True)

        await self.call(f"removing volume {name}", remove)

    async def remove_containers(self, label_filters: list[str]) -> list[str]:
        """Force-remove every container matching all the label filters; their names."""

        def remove(client: Any) -> list[str]:
            found = client.api.containers(all=True, filters={"label": label_filters})
            for item in found:
                with contextlib.suppress(docker.errors.NotFound):
                    client.api.remove_container(item["Id"], force=True)
            return [str(item["Names"][0]).lstrip("/") for item in found]

        return await self.call("removing containers", remove)

    async def remove_container(self, name: str) -> None:
        def remove(client: Any) -> None:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(name, force=True)

        await self.call(f"removing container {name}", remove)

    async def kill(self, name: str, sig: str) -> None:
        """Signal a container's PID 1; a container that is gone or stopped is not an error."""

        def kill(client: Any) -> None:
            try:
                client.api.kill(name, signal=sig)
            except docker.errors.APIError as exc:
                if exc.status_code not in (404, 409):
                    raise

        await self.call(f"signalling container {name}", kill)

    async def log_tail(self, name: str, count: int = 5) -> str:
        def tail(client: Any) -> str:
            try:
                raw: bytes = client.api.logs(name, tail=count)
            except docker.errors.NotFound:
                return "(no container)"
            return " | ".join(raw.decode("utf-8", errors="replace").splitlines())

        try:
            return await self.call(f"reading the log of {name}", tail)
        except ExternalCommandError as exc:
            return exc.message

    async def run_service(self, name: str, spec: ContainerSpec, *, stop_signal: str) -> None:
        """Replace any container of that name by a new one and start it. Restart policy `no`
        and a bounded json log."""

        def run(client: Any) -> None:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(name, force=True)
            container = client.containers.create(
                spec.image,
                **spec.create_kwargs(name),
                stop_signal=stop_signal,
                shm_size=_SHM_SIZE,
                log_config=LogConfig(
                    type=LogConfig.types.JSON, config={"max-size": "10m", "max-file": "3"}
                ),
                restart_policy={"Name": "no"},
            )
            container.start()

        await self.call(f"starting container {name}", run)

    # -- commands --------------------------------------------------------------------------
    async def exec(
        self,
        container: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_line: LineSink | None = None,
        cancellable: bool = True,
    ) -> CommandResult:
        """Run argv as postgres in a running container, output streamed to `on_line`.

        A cancellable exec records its pid in the container, so that a cancel can signal it
        (the engine API cannot kill an exec)."""
        what = f"{_program(argv)} in container {container}"
        pid_file = f"/tmp/cp-exec-{uuid.uuid4().hex}.pid"
        command = layout.exec_argv(argv, pid_file) if cancellable else list(argv)
        environment = dict(env or {})

        def begin(client: Any) -> tuple[str, Iterator[bytes]]:
            exec_id = client.api.exec_create(
                container, command, environment=environment, user="postgres"
            )["Id"]
            return exec_id, client.api.exec_start(exec_id, stream=True)

        exec_id, stream = await self.call(what, begin)

        async def interrupt(sig: str) -> None:
            kill = layout.kill_argv(pid_file, "KILL" if sig == "SIGKILL" else "TERM")
            await self.call(
                f"canceling {what}",
                lambda client: client.api.exec_start(
                    client.api.exec_create(container, kill, user="postgres")["Id"]
                ),
            )

        lines = await self._pump(stream, on_line, interrupt if cancellable else None, what)

        def exit_code(client: Any) -> int | None:
            # The stream ends a moment before the engine records the exit.
            for _ in range(50):
                state = client.api.exec_inspect(exec_id)
                if not state["Running"]:
                    return int(state["ExitCode"])
                time.sleep(0.1)
            return None

        code = await self.call(what, exit_code)
        if code is None:
            raise ExternalCommandError(f"{what} failed: its exit status never arrived")
        return CommandResult(code, lines)

    async def run_one_off(
        self, name: str, spec: ContainerSpec, *, on_line: LineSink | None = None
    ) -> CommandResult:
        """Run a container to its end, output streamed to `on_line`, then remove it."""
        what = f"{_program(spec.command)} in container {name}"

        def begin(client: Any) -> Iterator[bytes]:
            container = client.containers.create(spec.image, **spec.create_kwargs(name))
            # Attached before the start: `logs(follow=True)` drops a last line that has no
            # newline (pgBackRest's JSON has none) when the container exits while following.
            stream: Iterator[bytes] = client.api.attach(
                container.id, stdout=True, stderr=True, stream=True, logs=True
            )
            container.start()
            return stream

        async def interrupt(sig: str) -> None:
            await self.kill(name, sig)

        try:
            stream = await self.call(what, begin)
            lines = await self._pump(stream, on_line, interrupt, what)
            status = await self.call(what, lambda client: client.api.wait(name)["StatusCode"])
        finally:
            await asyncio.shield(self._remove_quietly(name))
        return CommandResult(int(status), lines)

    async def _remove_quietly(self, name: str) -> None:
        try:
            await self.remove_container(name)
        except ExternalCommandError as exc:
            log.warning("%s", exc.message)

    async def _pump(
        self,
        stream: Iterator[bytes],
        on_line: LineSink | None,
        interrupt: Interrupt | None,
        what: str,
    ) -> list[str]:
        """Read a blocking output stream in a worker thread and pass each line to `on_line`.

        If the calling task is cancelled, `interrupt` sends SIGTERM, then SIGKILL after the
        grace period, and the cancellation propagates once the stream has ended."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()

        def put(item: bytes | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def drain() -> None:
            try:
                for chunk in stream:
                    put(chunk)
            except BaseException as exc:
                put(exc)
            else:
                put(None)

        reader = asyncio.ensure_future(asyncio.to_thread(drain))
        splitter, lines = layout.LineSplitter(), list[str]()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise ExternalCommandError(f"output of {what} was cut off: {item}")
                for line in splitter.feed(item):
                    await _emit(line, lines, on_line)
            for line in splitter.flush():
                await _emit(line, lines, on_line)
        except asyncio.CancelledError:
            await asyncio.shield(self._interrupt(reader, interrupt))
            raise
        await reader
        return lines

    async def _interrupt(self, reader: asyncio.Future[None], interrupt: Interrupt | None) -> None:
        for sig, wait in (("SIGTERM", self._grace), ("SIGKILL", 30.0)):
            if reader.done():
                return
            if interrupt is not None:
                try:
                    await interrupt(sig)
                except ExternalCommandError as exc:
                    log.warning("%s", exc.message)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(reader), wait)


async def _emit(line: str, lines: list[str], on_line: LineSink | None) -> None:
    lines.append(line)
    if len(lines) > _KEEP_LINES:
        del lines[0]
    if on_line is not None:
        await on_line(line)


def running(attrs: Mapping[str, Any] | None) -> bool:
    """True when a container (its inspect attributes) runs."""
    return attrs is not None and bool(attrs.get("State", {}).get("Running"))


def mounted(attrs: Mapping[str, Any]) -> dict[str, bool]:
    """A container's mounts as {target: writable}."""
    return {m["Destination"]: bool(m.get("RW")) for m in attrs.get("Mounts", [])}


def _program(argv: Sequence[str]) -> str:
    return argv[0].rsplit("/", 1)[-1] if argv else "?"
