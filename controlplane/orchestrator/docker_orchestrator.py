"""Docker orchestrator: each instance is a container of INSTANCE_IMAGE, its data a named volume.

What lives where (and why) is in `docker_layout`; engine calls in `docker_engine`. Containers
are disposable: `start` creates a fresh one from the volume and the instance directory (so
one-off `-c` options and a new image never outlive one run), `stop` leaves it stopped for its
logs. The restart policy is `no`: restarting instances is the monitor's job, which keeps a
fenced one-off start from coming back by itself and lets `stop` use signals (fast, then
immediate shutdown) without the engine restarting what it just stopped.

Hosts: one engine per host id (`CONTROLPLANE_DOCKER_HOSTS`, default one host `local` at
`CONTROLPLANE_DOCKER_URL`/`DOCKER_HOST`). Every engine must see the control plane's data
directory and the posix repositories at the same paths (same machine, or a shared filesystem),
and instances listen on 127.0.0.1 of the host network (`address`, which the Swarm orchestrator
gives each host from its node).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from controlplane.errors import ExternalCommandError, PreconditionError
from controlplane.models import Host
from controlplane.orchestrator import docker_layout as layout
from controlplane.orchestrator import instance_secrets as staged
from controlplane.orchestrator import local_patroni
from controlplane.orchestrator.base import ContainerOptions, InstanceRef, InstanceStatus
from controlplane.orchestrator.docker_engine import ContainerSpec, Engine, mounted, running
from controlplane.orchestrator.hba import (
    USER_HBA_FILE,
    USER_IDENT_FILE,
    client_hba,
    client_ident,
    spec_lines,
)
from controlplane.orchestrator.patroni import refuse_held_lock, wait_for_role
from controlplane.settings import Settings
from controlplane.spec.secrets import SecretBox
from controlplane.system.files import OwnedFiles
from controlplane.system.process import CommandResult, LineSink

log = logging.getLogger(__name__)

DEFAULT_HOST_ID = "local"
_ADDRESS = "127.0.0.1"


def load_docker_hosts(text: str | None, *, default_url: str | None) -> dict[str, str | None]:
    """Engines by host id from `CONTROLPLANE_DOCKER_HOSTS`: inline `id=url,…`, or the path of
    a file with one `id=url` per line; unset means one host `local` at `default_url`."""
    if not text:
        return {DEFAULT_HOST_ID: default_url}
    if "=" not in text:
        text = Path(text).read_text()
    hosts: dict[str, str | None] = dict(layout.parse_docker_hosts(text))
    if not hosts:
        raise ValueError("CONTROLPLANE_DOCKER_HOSTS lists no host")
    return hosts


class DockerOrchestrator:
    """Instances are containers on the configured engines; see the module docstring."""

    name = "docker"

    def __init__(self, settings: Settings, hosts: Mapping[str, str | None] | None = None) -> None:
        self._settings = settings
        self._image = settings.instance_image
        configured = hosts or {DEFAULT_HOST_ID: settings.docker_url}
        self._engines = {
            host_id: Engine(host_id, url, grace_seconds=settings.cancel_grace_seconds)
            for host_id, url in configured.items()
        }
        self._root = settings.data_path / "instances"
        self._secrets = settings.data_path / "secrets"
        self._namespace = layout.namespace_of(settings.data_path)
        self._files = OwnedFiles(settings.os_user)
        self._memory = settings.memory_dir
        self._box = SecretBox.for_settings(settings)

    # -- placement -------------------------------------------------------------------------
    def hosts(self) -> list[Host]:
        """The configured engines; `unreachable` when the last call to one failed to connect."""
        return [
            Host(
                id=e.host_id,
                orchestrator=self.name,
                state="unreachable" if e.reachable is False else "available",
            )
            for e in self._engines.values()
        ]

    def default_host(self) -> str:
        return next(iter(self._engines))

    def address(self, host_id: str) -> str:
        """The address the host's instances listen on and are reached at: 127.0.0.1 of the
        host network (every engine is on this machine, see the module docstring)."""
        return _ADDRESS

    def port_is_free(self, host_id: str, port: int) -> bool:
        """True when nothing listens on the host's address and `port`: a bind attempt on
        127.0.0.1 (host networking on this machine), a connection attempt to a host reached
        at another address (another machine's ports cannot be bound from here)."""
        address = self.address(host_id)
        if address != _ADDRESS:
            return _answers(address, port) is False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((_ADDRESS, port))
            except OSError:
                return False
        return True

    def pick_port(self, host_id: str, exclude: set[int]) -> int:
        address = self.address(host_id)
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((_ADDRESS, 0))
                port = int(probe.getsockname()[1])
            if port in exclude:
                continue
            if address == _ADDRESS:
                return port
            answers = _answers(address, port)
            if answers is None:
                raise PreconditionError(f"host {host_id} at {address} does not answer")
            if not answers:
                return port
        raise PreconditionError(f"no free port found on host {host_id}")

    # -- paths -----------------------------------------------------------------------------
    def _dir(self, ref: InstanceRef) -> Path:
        return self._root / ref.instance_id

    def _secrets_dir(self, database_id: str) -> Path:
        return self._secrets / database_id

    def data_dir(self, ref: InstanceRef) -> str:
        return layout.PGDATA

    def socket_dir(self, ref: InstanceRef) -> str:
        return layout.SOCKET_DIR

    def file_path(self, ref: InstanceRef, name: str) -> str:
        # Mounted at the same path inside: host and container paths are one and the same.
        return str(self._dir(ref) / name)

    async def build_settings(self) -> dict[str, str]:
        # The image writes what its own Postgres build needs into /etc/controlplane/image.conf.
        return {}

    def connection_info(self, ref: InstanceRef) -> tuple[str, int]:
        return self.address(ref.host_id), ref.port

    def replication_dsn(self, ref: InstanceRef, database: str) -> str:
        """TCP on the host network; the password comes from the database's passfile (mounted
        in every container of the database), so pglogical's catalog never stores it."""
        passfile = str(self._secrets_dir(ref.database_id) / layout.PGPASS_FILE)
        return (
            f"host={self.address(ref.host_id)} port={ref.port} "
            f"dbname={layout.dsn_value(database)} "
            f"user=postgres passfile={layout.dsn_value(passfile)}"
        )

    # -- files -----------------------------------------------------------------------------
    def _ensure_dirs(self, ref: InstanceRef) -> None:
        data_path = self._settings.data_path
        data_path.mkdir(parents=True, exist_ok=True)
        self._root.mkdir(mode=0o755, exist_ok=True)
        directory = self._dir(ref)
        for path in (directory, directory / layout.STATE_DIR):
            path.mkdir(mode=0o700, exist_ok=True)
            self._files.chown(path)
        self._write_client_files(ref, fenced=(directory / layout.FENCE_FILE).exists())
        if ref.container is not None:
            self._files.write(directory / layout.OPTIONS_FILE, layout.encode_options(ref.container))
        self._files.write(directory / staged.RUNNER_FILE, staged.RUNNER, executable=True)
        self._ensure_secrets(ref.database_id)

    def _ensure_secrets(self, database_id: str) -> None:
        """The database's superuser password (one per database: every node reaches every other
        with it), its passfile and the SQL that sets it; written once, 0600."""
        self._secrets.mkdir(mode=0o755, exist_ok=True)
        directory = self._secrets_dir(database_id)
        directory.mkdir(mode=0o700, exist_ok=True)
        self._files.chown(directory)
        if (directory / layout.PASSWORD_FILE).exists():
            return
        password = secrets.token_urlsafe(32)
        self._files.write(directory / layout.PGPASS_FILE, layout.pgpass(password))
        self._files.write(directory / layout.PASSWORD_SQL_FILE, layout.password_sql(password))
        # Last: its presence says the other two are complete.
        self._files.write(directory / layout.PASSWORD_FILE, password + "\n")

    def _options(self, ref: InstanceRef) -> ContainerOptions:
        """The container options the ref carries, else those last recorded for the instance
        (a monitor restart or an in-place restore does not know the spec)."""
        if ref.container is not None:
            return ref.container
        return layout.decode_options(self._files.read(self._dir(ref) / layout.OPTIONS_FILE))

    def _image_of(self, options: ContainerOptions) -> str:
        return options.image or self._image

    def _password(self, database_id: str) -> str | None:
        path = self._secrets_dir(database_id) / layout.PASSWORD_FILE
        return path.read_text().strip() if path.exists() else None

    async def write_postgresql_conf(self, ref: InstanceRef, settings: Mapping[str, str]) -> bool:
        self._ensure_dirs(ref)
        text = layout.render_postgresql_conf(settings, str(self._dir(ref)))
        return self._files.write(self._dir(ref) / layout.CONF_FILE, text)

    async def write_file(self, ref: InstanceRef, name: str, text: str) -> bool:
        self._ensure_dirs(ref)
        return self._files.write(self._dir(ref) / name, text)

    async def fence_clients(self, ref: InstanceRef, *, fenced: bool) -> bool:
        """The hba file is rewritten whenever the instance directory is touched: a marker file
        beside it says which one to write."""
        marker = self._dir(ref) / layout.FENCE_FILE
        if fenced:
            self._files.write(marker, "fenced\n")
        else:
            marker.unlink(missing_ok=True)
        return self._write_client_files(ref, fenced=fenced)

    def _host_rules(self, ref: InstanceRef) -> str:
        """The control plane's own pg_hba.conf rules for the instance (loopback: every client
        is on this machine)."""
        return layout.HBA

    def _write_client_files(self, ref: InstanceRef, *, fenced: bool) -> bool:
        """pg_hba.conf and pg_ident.conf with the spec's rules (handed over as files beside
        them, see hba.write_client_rules); True when either changed."""
        directory = self._dir(ref)
        rules, maps = (
            spec_lines((directory / name).read_text() if (directory / name).exists() else None)
            for name in (USER_HBA_FILE, USER_IDENT_FILE)
        )
        text = client_hba(self._host_rules(ref), fenced=fenced, user_rules=rules)
        changed = self._files.write(directory / layout.HBA_FILE, text)
        return self._files.write(directory / layout.IDENT_FILE, client_ident(maps)) or changed

    async def set_environment(self, ref: InstanceRef, env: Mapping[str, str]) -> bool:
        """Sealed with the control plane's key; staged in memory for each start, which Postgres
        takes as an open file, never in its environment (see instance_secrets)."""
        self._ensure_dirs(ref)
        return staged.store(self._files, self._box, self._dir(ref) / staged.ENV_FILE, env)

    def _stage_secrets(self, ref: InstanceRef) -> layout.MountSpec:
        """Write the instance's secrets for the container about to start into a memory-backed
        directory of its own; the container deletes the file once it has it open."""
        directory = self._memory / ref.instance_id
        self._files.private_dir(self._memory, 0o755)
        self._files.private_dir(directory, 0o700)
        env = staged.unsealed(self._box, self._dir(ref) / staged.ENV_FILE)
        name = staged.CONTAINER_SECRETS_NAME
        self._files.write(directory / name, staged.export_lines(env))
        return layout.MountSpec(target=staged.CONTAINER_SECRETS_DIR, source=str(directory))

    def _unstage_secrets(self, ref: InstanceRef) -> None:
        directory = self._memory / ref.instance_id
        (directory / staged.CONTAINER_SECRETS_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            directory.rmdir()

    async def read_file(self, ref: InstanceRef, name: str) -> str | None:
        return self._files.read(self._dir(ref) / name)

    async def make_dirs(self, ref: InstanceRef, paths: Sequence[str]) -> None:
        """Create the directories on the host (they are mounted at the same path); a running
        container that lacks a repository mount they need is recreated to get it."""
        volumes = self._options(ref).volumes
        on_host = [layout.host_path(p, volumes) for p in paths]
        await asyncio.to_thread(self._files.make_dirs, on_host)
        current = await self._engine(ref).inspect(self._name(ref))
        if current is None or not running(current):
            return
        # Only the instance's own repositories (and their CA files) are worth a restart; a
        # restore source gets its mount when the restore restarts the container anyway.
        wanted = await asyncio.to_thread(self._repository_mounts, ref, with_restore=False)
        if not layout.covers(mounted(current), wanted):
            log.info("instance %s: restarting its container for a new repository", ref.instance_id)
            await self.stop(ref, on_line=_quiet)
            await self.start(ref, on_line=_quiet)

    def _repository_mounts(
        self, ref: InstanceRef, *, with_restore: bool = True
    ) -> list[layout.MountSpec]:
        """Mounts of the posix repositories (and CA files) named by the instance's pgBackRest
        configs (every other `pgbackrest*.conf` is a restore source); own repositories are
        created if absent, read-only sources that do not exist are left out (pgBackRest then
        reports what is missing itself). A repository under an extra volume is reached through
        that volume: its directory is made under the volume's host path, it gets no mount."""
        directory = self._dir(ref)
        own = directory / layout.OWN_PGBACKREST_CONFIG
        restores = [
            p.read_text()
            for p in sorted(directory.glob("pgbackrest*.conf"))
            if with_restore and p.name != own.name
        ]
        mounts = layout.repository_mounts(own.read_text() if own.exists() else None, restores)
        volumes = self._options(ref).volumes
        found = []
        for mount in mounts:
            if layout.volume_of(mount.target, volumes) is not None:
                if not mount.read_only:
                    self._files.make_dirs([layout.host_path(mount.target, volumes)])
                continue
            if not mount.read_only:
                self._files.make_dirs([mount.source])
            elif not Path(mount.source).exists():
                continue
            found.append(mount)
        return found

    def _mounts(self, ref: InstanceRef, *, with_data: bool) -> list[layout.MountSpec]:
        """Our own mounts, the repositories not on an extra volume, and the extra volumes
        (their host paths made if absent, owned by the OS user)."""
        own = layout.instance_mounts(
            instance_dir=str(self._dir(ref)),
            secrets_dir=str(self._secrets_dir(ref.database_id)),
            volume=self._volume(ref),
            repositories=[],
        )
        volumes = self._options(ref).volumes
        clashing = layout.clashing_volumes(volumes, own)
        if clashing:
            raise PreconditionError(
                f"extra volume(s) at {', '.join(clashing)} of instance {ref.instance_id} would "
                "hide the control plane's own mounts there: choose another destination_path"
            )
        self._files.make_dirs([v.host_path for v in volumes])
        mounts = layout.instance_mounts(
            instance_dir=str(self._dir(ref)),
            secrets_dir=str(self._secrets_dir(ref.database_id)),
            volume=self._volume(ref) if with_data else None,
            repositories=self._repository_mounts(ref),
        )
        return sorted([*mounts, *layout.extra_mounts(volumes)])

    # -- engine objects --------------------------------------------------------------------
    def _engine(self, ref: InstanceRef) -> Engine:
        engine = self._engines.get(ref.host_id)
        if engine is None:
            raise PreconditionError(f"host {ref.host_id} is not a configured docker engine")
        return engine

    def _name(self, ref: InstanceRef) -> str:
        return layout.container_name(self._namespace, ref.instance_id)

    def _volume(self, ref: InstanceRef) -> str:
        return layout.volume_name(self._namespace, ref.instance_id)

    async def _running(self, ref: InstanceRef) -> bool:
        return running(await self._engine(ref).inspect(self._name(ref)))

    async def _refuse_running(self, ref: InstanceRef, what: str) -> None:
        if await self._running(ref):
            raise PreconditionError(
                f"{what} of instance {ref.instance_id} needs it stopped, but it is running"
            )

    async def _reap(self, ref: InstanceRef) -> None:
        """Remove the instance's data one-offs: one still alive here was left by a crashed
        server (operations on an instance's data are serialised by task locks), and it must
        not write into the volume alongside a new one."""
        filters = layout.instance_filter(self._namespace, ref.instance_id, layout.ROLE_DATA_ONE_OFF)
        removed = await self._engine(ref).remove_containers(filters)
        if removed:
            log.warning("instance %s: removed leftover container(s) %s", ref.instance_id, removed)

    # -- lifecycle -------------------------------------------------------------------------
    async def create_instance(self, ref: InstanceRef, *, on_line: LineSink) -> bool:
        self._ensure_dirs(ref)
        await self._engine(ref).create_volume(self._volume(ref), self._labels(ref, "data"))
        if await self._running(ref):
            return False
        password_file = str(self._secrets_dir(ref.database_id) / layout.PASSWORD_FILE)
        argv = layout.init_argv(password_file, self._files.owner_ids())
        result = await self._one_off(ref, argv, on_line=on_line)
        if result.exit_code == layout.INIT_EXISTS:
            return False
        if result.exit_code != 0:
            raise ExternalCommandError(
                f"initdb of instance {ref.instance_id} failed: {result.tail(5)}",
                exit_code=result.exit_code,
            )
        return True

    def _labels(self, ref: InstanceRef, role: str) -> dict[str, str]:
        return layout.labels(ref, self._namespace, role)

    async def has_cluster(self, ref: InstanceRef) -> bool:
        argv = layout.has_file_argv("global/pg_control")
        if await self._running(ref):
            result = await self._engine(ref).exec(self._name(ref), argv, cancellable=False)
            return result.exit_code == 0
        if not await self._engine(ref).volume_exists(self._volume(ref)):
            return False
        return (await self._one_off(ref, argv)).exit_code == 0

    async def empty_data_dir(self, ref: InstanceRef) -> None:
        self._ensure_dirs(ref)
        await self._refuse_running(ref, "emptying the data directory")
        await self._engine(ref).create_volume(self._volume(ref), self._labels(ref, "data"))
        result = await self._one_off(ref, layout.empty_argv())
        if result.exit_code != 0:
            raise ExternalCommandError(
                f"emptying the data directory of {ref.instance_id} failed: {result.tail(5)}"
            )

    async def status(self, ref: InstanceRef) -> InstanceStatus:
        engine = self._engine(ref)
        current = await engine.inspect(self._name(ref))
        if current is not None:
            return "running" if running(current) else "stopped"
        # No container but a volume: the monitor's start() makes a new container for it.
        return "stopped" if await engine.volume_exists(self._volume(ref)) else "missing"

    async def start(
        self, ref: InstanceRef, *, on_line: LineSink, options: Mapping[str, str] | None = None
    ) -> None:
        """Create a fresh container on the volume and start it, wait until Postgres accepts
        writes, then make sure the superuser answers to this database's password. A Patroni
        member gets a container running its Patroni, which starts Postgres in the role the
        cluster gives it."""
        if ref.supervisor == "patroni":
            await self._start_patroni(ref, role=None, on_line=on_line)
            return
        extra = layout.check_start_options(options)
        engine = self._engine(ref)
        container = self._options(ref)
        image = self._image_of(container)
        digest = layout.options_digest(image, container)
        current = await engine.inspect(self._name(ref))
        if current is not None and running(current) and self._made_with(current) != digest:
            await on_line(f"container {self._name(ref)}: recreating it with new container options")
            await self.stop(ref, on_line=on_line)
            current = None
        if not running(current):
            await self._reap(ref)
            if not await engine.volume_exists(self._volume(ref)):
                raise ExternalCommandError(
                    f"start of instance {ref.instance_id} failed: its data volume "
                    f"{self._volume(ref)} is missing"
                )
            self._ensure_dirs(ref)
            mounts = await asyncio.to_thread(self._mounts, ref, with_data=True)
            staged = await asyncio.to_thread(self._stage_secrets, ref)
            own = {**self._labels(ref, layout.ROLE_INSTANCE), layout.OPTIONS_LABEL: digest}
            spec = ContainerSpec(
                image=image,
                command=layout.postgres_argv(str(self._dir(ref)), extra),
                labels=layout.container_labels(own, container),
                mounts=sorted([*mounts, staged]),
                nano_cpus=container.nano_cpus,
                mem_limit=container.memory_bytes,
            )
            try:
                await engine.run_service(self._name(ref), spec, stop_signal="SIGINT")
                await on_line(
                    f"container {self._name(ref)} started"
                    + (f" with {' '.join(extra)}" if extra else "")
                )
                await self._wait_writable(ref)
            finally:
                # Taken by the container as it starts; never left behind, whatever happened.
                await asyncio.to_thread(self._unstage_secrets, ref)
        else:
            await self._wait_writable(ref)
        await self._ensure_password(ref)

    def _made_with(self, attrs: dict[str, Any]) -> str:
        """The options digest a container was made with (one made before options were applied
        carries none: it was made with none)."""
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        found = labels.get(layout.OPTIONS_LABEL)
        return str(found) if found else layout.options_digest(self._image, ContainerOptions())

    async def _wait_writable(self, ref: InstanceRef, limit: float = 600.0) -> None:
        """Postgres accepts connections during recovery: wait for pg_is_in_recovery() = f,
        asked over the container's socket (TCP may not know our password yet)."""
        engine, name = self._engine(ref), self._name(ref)
        deadline = time.monotonic() + limit
        probe = layout.psql_argv(ref.port, "-c", "SELECT pg_is_in_recovery()")
        last = ""
        while time.monotonic() < deadline:
            if not await self._running(ref):
                raise ExternalCommandError(
                    f"instance {ref.instance_id} stopped during start-up: "
                    f"{await engine.log_tail(name)}"
                )
            result = await engine.exec(name, probe, cancellable=False)
            if result.exit_code == 0 and result.lines and result.lines[-1].strip() == "f":
                return
            last = result.tail(1)
            await asyncio.sleep(0.2)
        raise ExternalCommandError(
            f"instance {ref.instance_id} did not become writable in {limit:.0f}s: {last}"
        )

    async def _ensure_password(self, ref: InstanceRef) -> None:
        """A cluster restored from another database's backup has that database's superuser
        password: set ours (as a SCRAM verifier, from a 0600 file) over the socket."""
        try:
            conn = await self.connect(ref)
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
            pass
        else:
            await conn.close()
            return
        sql = str(self._secrets_dir(ref.database_id) / layout.PASSWORD_SQL_FILE)
        result = await self._engine(ref).exec(
            self._name(ref), layout.psql_argv(ref.port, "-f", sql), cancellable=False
        )
        if result.exit_code != 0:
            raise ExternalCommandError(
                f"setting the superuser password of {ref.instance_id} failed: {result.tail(3)}"
            )
        conn = await self.connect(ref)
        await conn.close()

    async def stop(self, ref: InstanceRef, *, on_line: LineSink) -> None:
        """Fast shutdown (SIGINT); if it does not finish in time (a shutdown checkpoint waits
        for archive-push while the repository is unreachable), immediate shutdown (SIGQUIT):
        the next start runs crash recovery and loses nothing committed. Then SIGKILL. A Patroni
        member's container gets SIGTERM (Patroni stops its Postgres, a leader hands over first),
        then SIGKILL, which takes its Postgres down with it."""
        if not await self._running(ref):
            return
        engine, name = self._engine(ref), self._name(ref)
        steps: tuple[tuple[str, str, float], ...] = (
            ("SIGINT", "fast", 120.0),
            ("SIGQUIT", "immediate", 60.0),
        )
        if ref.supervisor == "patroni":
            steps = (("SIGTERM", "patroni", 120.0),)
        for sig, mode, wait in steps:
            await engine.kill(name, sig)
            if await self._wait_exit(ref, wait):
                await on_line(f"container {name} stopped ({mode} shutdown)")
                return
            await on_line(f"{mode} shutdown of {ref.instance_id} did not finish in {wait:.0f}s")
        await engine.kill(name, "SIGKILL")
        if not await self._wait_exit(ref, 30.0):
            raise ExternalCommandError(
                f"stop of instance {ref.instance_id} failed: container {name} is still running"
            )

    async def _wait_exit(self, ref: InstanceRef, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not await self._running(ref):
                return True
            await asyncio.sleep(0.2)
        return False

    async def release_from_patroni(self, ref: InstanceRef) -> None:
        """In a one-off on the data volume (the instance is stopped): Patroni's postgresql.conf
        replaced by the one it moved aside, if any, and its own files removed. Postgres itself
        never reads the postgresql.conf in PGDATA here (see docker_layout)."""
        await self._refuse_running(ref, "releasing the data directory from Patroni")
        if not await self._engine(ref).volume_exists(self._volume(ref)):
            return
        result = await self._one_off(ref, layout.release_argv())
        if result.exit_code != 0:
            raise ExternalCommandError(
                f"releasing {ref.instance_id} from Patroni failed: {result.tail(5)}",
                exit_code=result.exit_code,
            )

    async def start_patroni(self, ref: InstanceRef, config: str, *, role: str) -> None:
        """Make the instance a Patroni member: its configuration (placed in this layout, see
        docker_layout.patroni_config) written into the instance directory, and a container
        whose process is Patroni; wait until the member serves as `role`. The primary's
        superuser then answers to the database's password again (adoption set Patroni's)."""
        self._ensure_dirs(ref)
        placed = layout.patroni_config(config, str(self._dir(ref)), self._password(ref.database_id))
        self._files.write(self._dir(ref) / local_patroni.CONFIG_FILE, placed)
        await self._start_patroni(ref, role=role, on_line=_quiet)
        if role == "primary":
            # Patroni answers as primary from its promote request on: wait for the promotion.
            await self._wait_writable(ref)
            await self._ensure_password(ref)

    def _prepare_patroni(self, ref: InstanceRef) -> None:
        """The instance directory as a Patroni member's container needs it: `bin/` with the
        image's server programs (`postgres` wrapped, see local_patroni) and our config file
        (a replica has none of its own until a spec change writes it)."""
        self._ensure_dirs(ref)
        directory = self._dir(ref)
        bin_dir = directory / local_patroni.BIN_DIR
        self._files.private_dir(bin_dir, 0o700)
        wrapper = local_patroni.postgres_wrapper(Path(layout.PG_BIN) / "postgres")
        self._files.write(bin_dir / "postgres", wrapper, executable=True)
        for program in layout.PATRONI_PROGRAMS:
            target = bin_dir / program
            if not target.is_symlink():
                with contextlib.suppress(FileExistsError):
                    target.symlink_to(f"{layout.PG_BIN}/{program}")
        if not (directory / layout.CONF_FILE).exists():
            text = layout.render_postgresql_conf({}, str(directory))
            self._files.write(directory / layout.CONF_FILE, text)

    def _patroni_config(self, ref: InstanceRef) -> dict[str, Any]:
        text = self._files.read(self._dir(ref) / local_patroni.CONFIG_FILE)
        if not text:
            raise PreconditionError(f"instance {ref.instance_id} has no Patroni configuration")
        parsed: dict[str, Any] = json.loads(text)
        return parsed

    async def _start_patroni(
        self, ref: InstanceRef, *, role: str | None, on_line: LineSink
    ) -> None:
        """A fresh container running the member's Patroni, unless one runs; then, if `role`
        is given, wait until the member serves as that role."""
        config = self._patroni_config(ref)
        if not await self._running(ref):
            await self._reap(ref)
            await self._engine(ref).create_volume(self._volume(ref), self._labels(ref, "data"))
            await asyncio.to_thread(self._prepare_patroni, ref)
            await refuse_held_lock(ref.instance_id, config)
            container = self._options(ref)
            image = self._image_of(container)
            own = {
                **self._labels(ref, layout.ROLE_INSTANCE),
                layout.OPTIONS_LABEL: layout.options_digest(image, container),
            }
            spec = ContainerSpec(
                image=image,
                command=layout.patroni_argv(str(self._dir(ref) / local_patroni.CONFIG_FILE)),
                labels=layout.container_labels(own, container),
                mounts=sorted(await asyncio.to_thread(self._mounts, ref, with_data=True)),
                nano_cpus=container.nano_cpus,
                mem_limit=container.memory_bytes,
            )
            await self._run_patroni(ref, spec, on_line=on_line)
        if role is not None:
            await self._wait_role(ref, config, role)

    async def _run_patroni(
        self, ref: InstanceRef, spec: ContainerSpec, *, on_line: LineSink
    ) -> None:
        """The member's container, with its repository secrets staged for it (see
        instance_secrets). SIGTERM stops it: Patroni stops its Postgres, and a leader hands
        its lock over first."""
        secrets_mount = await asyncio.to_thread(self._stage_secrets, ref)
        spec.mounts = sorted([*spec.mounts, secrets_mount])
        try:
            await self._engine(ref).run_service(self._name(ref), spec, stop_signal="SIGTERM")
            await on_line(f"container {self._name(ref)} started (patroni)")
            await self._wait_patroni_started(ref)
        finally:
            await asyncio.to_thread(self._unstage_secrets, ref)

    async def _wait_patroni_started(self, ref: InstanceRef, limit: float = 30.0) -> None:
        """Until the container has taken its staged secrets (the file is gone), or it died."""
        staged_file = self._memory / ref.instance_id / staged.CONTAINER_SECRETS_NAME
        deadline = time.monotonic() + limit
        while staged_file.exists() and time.monotonic() < deadline:
            if not await self._running(ref):
                raise ExternalCommandError(
                    f"patroni of {ref.instance_id} exited: "
                    f"{await self._engine(ref).log_tail(self._name(ref), 8)}"
                )
            await asyncio.sleep(0.1)

    async def _wait_role(self, ref: InstanceRef, config: dict[str, Any], role: str) -> None:
        async def alive() -> bool:
            return await self._running(ref)

        async def log_tail() -> str:
            return await self._engine(ref).log_tail(self._name(ref), 8)

        await wait_for_role(config, role, member=ref.instance_id, alive=alive, log_tail=log_tail)

    async def remove_instance(self, ref: InstanceRef, *, on_line: LineSink) -> None:
        """Stop, then remove every container, the volume, the instance directory, and the
        database's secrets once no instance of the database is left."""
        await self.stop(ref, on_line=on_line)
        engine = self._engine(ref)
        await engine.remove_containers(layout.instance_filter(self._namespace, ref.instance_id))
        await engine.remove_volume(self._volume(ref))
        await asyncio.to_thread(shutil.rmtree, self._dir(ref), True)
        if self._root.exists() and not any(
            p.name.rsplit("-", 1)[0] == ref.database_id for p in self._root.iterdir()
        ):
            await asyncio.to_thread(shutil.rmtree, self._secrets_dir(ref.database_id), True)

    # -- commands --------------------------------------------------------------------------
    async def exec(
        self,
        ref: InstanceRef,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_line: LineSink | None = None,
    ) -> CommandResult:
        """In the running container when it has the mounts the command's config needs;
        otherwise (stopped, or a restore source it does not mount) in a one-off container
        without the data volume, so nothing is ever written into a container's own layer."""
        current = await self._engine(ref).inspect(self._name(ref))
        if current is not None and running(current):
            needed = await asyncio.to_thread(self._config_mounts, ref, argv)
            if layout.covers(mounted(current), needed):
                return await self._engine(ref).exec(self._name(ref), argv, env=env, on_line=on_line)
        return await self._one_off(ref, argv, env=env, on_line=on_line, with_data=False)

    def _config_mounts(self, ref: InstanceRef, argv: Sequence[str]) -> list[layout.MountSpec]:
        """The mounts the `--config` of argv needs (its repositories on an extra volume are
        there in every container of the instance)."""
        config = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        if config is None or not Path(config).exists():
            return []
        mounts = layout.repository_mounts(None, [Path(config).read_text()])
        mounts = layout.outside_volumes(mounts, self._options(ref).volumes)
        return [m for m in mounts if Path(m.source).exists()]

    async def run_one_off(
        self,
        ref: InstanceRef,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_line: LineSink | None = None,
    ) -> CommandResult:
        """In a one-off container of the same image sharing the data volume and the mounts;
        the instance container must be stopped."""
        await self._refuse_running(ref, "a one-off command")
        return await self._one_off(ref, argv, env=env, on_line=on_line)

    async def _one_off(
        self,
        ref: InstanceRef,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_line: LineSink | None = None,
        with_data: bool = True,
    ) -> CommandResult:
        """Run argv in a new container of the image with the instance's mounts (and the data
        volume when `with_data`: then any leftover data one-off is removed first)."""
        if with_data:
            await self._reap(ref)
        role = layout.ROLE_DATA_ONE_OFF if with_data else layout.ROLE_TOOL_ONE_OFF
        # The instance's image, labels and extra volumes (a repository may be on one); not its
        # CPU and memory limits, which size Postgres, not a restore run while it is stopped.
        container = self._options(ref)
        spec = ContainerSpec(
            image=self._image_of(container),
            command=argv,
            labels=layout.container_labels(self._labels(ref, role), container),
            mounts=await asyncio.to_thread(self._mounts, ref, with_data=with_data),
            environment=env,
        )
        name = layout.one_off_name(self._namespace, ref.instance_id, uuid.uuid4().hex[:8])
        return await self._engine(ref).run_one_off(name, spec, on_line=on_line)

    async def connect(self, ref: InstanceRef, database: str = "postgres") -> asyncpg.Connection:
        """TCP to the host's address as the superuser, with the database's password."""
        conn: asyncpg.Connection = await asyncpg.connect(
            host=self.address(ref.host_id),
            port=ref.port,
            user="postgres",
            password=self._password(ref.database_id),
            database=database,
            timeout=10,
        )
        return conn


def _answers(address: str, port: int, timeout: float = 2.0) -> bool | None:
    """Whether something accepts TCP connections at address:port: True, False (refused), or
    None when the address does not answer at all (timed out, no route)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return None


async def _quiet(line: str) -> None:
    log.debug("%s", line)
