"""Local orchestrator: each instance is a data directory and a pg_ctl-managed postmaster."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import asyncpg
import msgspec

from controlplane.errors import ExternalCommandError, PreconditionError
from controlplane.models import Host
from controlplane.orchestrator import instance_secrets as secrets
from controlplane.orchestrator import local_patroni
from controlplane.orchestrator.base import InstanceRef, InstanceStatus
from controlplane.orchestrator.hba import (
    USER_HBA_FILE,
    USER_IDENT_FILE,
    client_hba,
    client_ident,
    spec_lines,
)
from controlplane.orchestrator.local_patroni import PatroniProcesses, release_data_dir
from controlplane.orchestrator.patroni import refuse_held_lock
from controlplane.settings import Settings
from controlplane.spec.secrets import SecretBox
from controlplane.system.files import OwnedFiles
from controlplane.system.postgres import hba, postmaster_running
from controlplane.system.process import CommandResult, LineSink, as_user, run_command

LOCAL_HOST_ID = "local"
# The default host's address; named hosts get their own (see LocalOrchestrator.address).
LOCAL_ADDRESS = "127.0.0.1"
# pg_ctl starts with the secrets' memory file on stdin: this moves it to descriptor 9, which
# the postmaster and every process it forks inherit, and gives pg_ctl /dev/null instead.
_HAND_OVER = f'exec {secrets.SECRETS_FD}<&0 </dev/null && exec "$@"'
_OPTION = re.compile(r"^[a-z_]+=[A-Za-z0-9_.]+$")
_INCLUDE = "\ninclude_if_exists = 'controlplane.conf'\n"
_HBA = hba("Unix socket: its directory is private to the OS user.")


class LocalOrchestrator:
    """Instances live under `<data_dir>/instances/<instance id>`, sockets under the run dir.

    Named hosts (CONTROLPLANE_LOCAL_HOSTS) are separate network hosts on this one machine:
    each has its own loopback address and its own socket directory, so the same port can be
    used on every host, as on separate machines.
    """

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._root = settings.data_path / "instances"
        self._host_ids = settings.local_host_ids
        self._sockets = settings.run_dir / "i"
        self._build_settings: dict[str, str] | None = None
        self._files = OwnedFiles(settings.os_user)
        self._box = SecretBox.for_settings(settings)
        self.patroni = PatroniProcesses(
            self._files, settings.os_user, settings.patroni_bin, settings.pg_bin_dir
        )

    # -- placement -------------------------------------------------------------------------
    def hosts(self) -> list[Host]:
        return [Host(id=h, orchestrator=self.name, state="available") for h in self._host_ids]

    def default_host(self) -> str:
        return self._host_ids[0]

    def address(self, host_id: str) -> str:
        """The host's loopback address: 127.0.0.1 for the default host `local`, 127.0.1.<i>
        for the i-th named host (Linux routes all of 127.0.0.0/8 to the loopback interface).

        The address follows the host's place in CONTROLPLANE_LOCAL_HOSTS: reordering the list
        moves the hosts' instances to other addresses.
        """
        if host_id == LOCAL_HOST_ID:
            return LOCAL_ADDRESS
        if host_id not in self._host_ids:
            raise PreconditionError(
                f"host {host_id} is not a local host; the hosts are {', '.join(self._host_ids)}"
            )
        index = self._host_ids.index(host_id)
        return f"127.0.{1 + index // 254}.{1 + index % 254}"

    def port_is_free(self, host_id: str, port: int) -> bool:
        """True when nothing listens on the host's address and `port` (a bind attempt, closed
        at once)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((self.address(host_id), port))
            except OSError:
                return False
        return True

    def pick_port(self, host_id: str, exclude: set[int]) -> int:
        """A currently free TCP port on the host's address that no other instance was given."""
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((self.address(host_id), 0))
                port = int(probe.getsockname()[1])
            if port not in exclude:
                return port
        raise PreconditionError(f"no free port found on host {host_id}")

    # -- paths -----------------------------------------------------------------------------
    def _dir(self, ref: InstanceRef) -> Path:
        """`<data dir>/instances/<id>` on the one default host; `<data dir>/hosts/<host>/<id>`
        on named hosts (CONTROLPLANE_LOCAL_HOSTS), so each host's instances sit apart."""
        if ref.host_id == LOCAL_HOST_ID:
            return self._root / ref.instance_id
        return self._settings.data_path / "hosts" / ref.host_id / ref.instance_id

    def data_dir(self, ref: InstanceRef) -> str:
        return str(self._dir(ref) / "pgdata")

    def _socket_dir(self, host_id: str) -> Path:
        """`<run dir>/i` for the default host, `<run dir>/i/<host>` for a named one: each
        host's sockets apart, so two hosts can both have an instance on one port. Short, as
        unix socket paths are limited to ~107 bytes."""
        if host_id == LOCAL_HOST_ID:
            return self._sockets
        return self._sockets / host_id

    def socket_dir(self, ref: InstanceRef) -> str:
        return str(self._socket_dir(ref.host_id))

    def file_path(self, ref: InstanceRef, name: str) -> str:
        return str(self._dir(ref) / name)

    def replication_dsn(self, ref: InstanceRef, database: str) -> str:
        # Every host's socket directory is private to the OS user the instances share: no
        # password on the wire.
        return f"host={self.socket_dir(ref)} port={ref.port} dbname={database} user=postgres"

    async def build_settings(self) -> dict[str, str]:
        """Debian's 15.20 lets logical decoding load only the output plugins named in
        output_plugin_libraries, and pglogical's is not in its default; older builds reject the
        parameter. Asked once of the installed server binary."""
        if self._build_settings is None:
            result = await run_command(self._as_user([self._pg("postgres"), "--describe-config"]))
            names = {line.split("\t", 1)[0] for line in result.lines}
            self._build_settings = (
                {"output_plugin_libraries": "pgoutput, test_decoding, pglogical_output"}
                if "output_plugin_libraries" in names
                else {}
            )
        return dict(self._build_settings)

    def connection_info(self, ref: InstanceRef) -> tuple[str, int]:
        """The host's own address: instances listen on it alone (listen_addresses)."""
        return self.address(ref.host_id), ref.port

    def _pg(self, program: str) -> str:
        return str(self._settings.pg_bin_dir / program)

    def _as_user(self, argv: Sequence[str]) -> list[str]:
        return as_user(argv, self._settings.os_user)

    def _ensure_dirs(self, ref: InstanceRef) -> None:
        data_path = self._settings.data_path
        data_path.mkdir(parents=True, exist_ok=True)
        data_path.chmod(0o755)
        self._dir(ref).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._files.private_dir(self._sockets.parent, 0o755)
        self._files.private_dir(self._sockets, 0o700)
        if ref.host_id != LOCAL_HOST_ID:
            self._files.private_dir(self._socket_dir(ref.host_id), 0o700)
        self._dir(ref).mkdir(mode=0o700, exist_ok=True)
        self._files.chown(self._dir(ref))
        self._files.write(self._dir(ref) / secrets.RUNNER_FILE, secrets.RUNNER, executable=True)

    # -- lifecycle -------------------------------------------------------------------------
    async def create_instance(self, ref: InstanceRef, *, on_line: LineSink) -> bool:
        self._ensure_dirs(ref)
        pgdata = Path(self.data_dir(ref))
        if (pgdata / "PG_VERSION").exists():
            return False
        # initdb into a scratch directory and rename: a crash mid-initdb leaves no half cluster.
        scratch = pgdata.with_name("pgdata.init")
        shutil.rmtree(scratch, ignore_errors=True)
        result = await run_command(
            self._as_user(
                [
                    self._pg("initdb"),
                    "-D",
                    str(scratch),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--data-checksums",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ]
            ),
            on_line=on_line,
        )
        if result.exit_code != 0:
            raise ExternalCommandError(
                f"initdb of instance {ref.instance_id} failed: {result.tail(5)}",
                exit_code=result.exit_code,
            )
        with (scratch / "postgresql.conf").open("a") as handle:
            handle.write(_INCLUDE)
        (scratch / "pg_hba.conf").write_text(_HBA)
        scratch.rename(pgdata)
        return True

    async def write_postgresql_conf(self, ref: InstanceRef, settings: Mapping[str, str]) -> bool:
        lines = ["# Managed by controlplane: rewritten on every change of the spec."]
        lines += [f"{key} = {value}" for key, value in sorted(settings.items())]
        conf = Path(self.data_dir(ref)) / "controlplane.conf"
        self._include_managed_conf(conf.parent / "postgresql.conf")
        return self._files.write(conf, "\n".join(lines) + "\n")

    def _include_managed_conf(self, main: Path) -> None:
        """A data directory restored from a backup another tool made (pgEdge's) has a
        postgresql.conf that does not include ours: append the include, once."""
        text = self._files.read(main)
        if text is not None and _INCLUDE.strip() not in text:
            self._files.write(main, text + _INCLUDE)

    async def write_file(self, ref: InstanceRef, name: str, text: str) -> bool:
        self._ensure_dirs(ref)
        return self._files.write(self._dir(ref) / name, text)

    async def set_environment(self, ref: InstanceRef, env: Mapping[str, str]) -> bool:
        """Sealed with the control plane's key; opened only to start Postgres, which gets the
        secrets as an open memory file (see instance_secrets), never in its environment."""
        self._ensure_dirs(ref)
        return secrets.store(self._files, self._box, self._dir(ref) / secrets.ENV_FILE, env)

    async def release_from_patroni(self, ref: InstanceRef) -> None:
        await asyncio.to_thread(release_data_dir, Path(self.data_dir(ref)))

    async def read_file(self, ref: InstanceRef, name: str) -> str | None:
        return self._files.read(self._dir(ref) / name)

    async def has_cluster(self, ref: InstanceRef) -> bool:
        return (Path(self.data_dir(ref)) / "global" / "pg_control").exists()

    async def empty_data_dir(self, ref: InstanceRef) -> None:
        await asyncio.to_thread(self._empty_data_dir, ref)

    def _empty_data_dir(self, ref: InstanceRef) -> None:
        self._ensure_dirs(ref)
        pgdata = Path(self.data_dir(ref))
        shutil.rmtree(pgdata, ignore_errors=True)
        pgdata.mkdir(mode=0o700)
        self._files.chown(pgdata)

    async def make_dirs(self, ref: InstanceRef, paths: Sequence[str]) -> None:
        await asyncio.to_thread(self._files.make_dirs, paths)

    async def status(self, ref: InstanceRef) -> InstanceStatus:
        if ref.supervisor == "patroni":
            # Patroni keeps its Postgres running (or clones it): what runs is Patroni.
            return "running" if self.patroni.pid(self._dir(ref)) is not None else "stopped"
        pgdata = Path(self.data_dir(ref))
        if not (pgdata / "PG_VERSION").exists():
            return "missing"
        running = postmaster_running(pgdata)
        if running is None:
            result = await run_command(
                self._as_user([self._pg("pg_ctl"), "status", "-D", str(pgdata)])
            )
            running = result.exit_code == 0
        return "running" if running else "stopped"

    async def _pg_ctl_status(self, ref: InstanceRef) -> InstanceStatus:
        return await self.status(msgspec.structs.replace(ref, supervisor="pg_ctl"))

    async def start_patroni(self, ref: InstanceRef, config: str, *, role: str) -> None:
        """Make the instance a Patroni member with `config` (its rendered configuration) and
        start its Patroni; wait until it serves as `role` (primary or replica)."""
        self._ensure_dirs(ref)
        self._files.write(self._dir(ref) / local_patroni.CONFIG_FILE, config)
        await self._start_patroni(ref, role=role)

    async def _start_patroni(self, ref: InstanceRef, *, role: str | None) -> None:
        home = self._dir(ref)
        self._ensure_dirs(ref)
        env = secrets.unsealed(self._box, home / secrets.ENV_FILE)
        handed = secrets.memory_file(env, self._files.owner())
        try:
            await self.patroni.start(home, handed, secrets.postmaster_environment())
        finally:
            os.close(handed)
        if role is not None:
            await self.patroni.wait_ready(home, role)

    async def start(
        self, ref: InstanceRef, *, on_line: LineSink, options: Mapping[str, str] | None = None
    ) -> None:
        if ref.supervisor == "patroni":
            if self.patroni.pid(self._dir(ref)) is None:
                text = (self._dir(ref) / local_patroni.CONFIG_FILE).read_text()
                await refuse_held_lock(ref.instance_id, json.loads(text))
            await self._start_patroni(ref, role=None)
            return
        if await self.status(ref) != "running":
            # The socket directory under /tmp may have gone with a reboot.
            self._ensure_dirs(ref)
            argv = [
                self._pg("pg_ctl"),
                "start",
                "-w",
                "-t",
                "300",
                "-D",
                self.data_dir(ref),
                "-l",
                self.file_path(ref, "postgres.log"),
            ]
            extra = [f"{k}={v}" for k, v in sorted((options or {}).items())]
            if any(not _OPTION.match(item) for item in extra):
                raise ValueError(f"unsafe start option in {extra}")
            if extra:
                # pg_ctl passes -o through a shell; the pattern above keeps it inert.
                argv += ["-o", " ".join(f"-c {item}" for item in extra)]
            env = secrets.unsealed(self._box, self._dir(ref) / secrets.ENV_FILE)
            handed = secrets.memory_file(env, self._files.owner())
            try:
                result = await run_command(
                    self._as_user(["sh", "-c", _HAND_OVER, "sh", *argv]),
                    env=secrets.postmaster_environment(),
                    inherit_env=False,
                    stdin=handed,
                    on_line=on_line,
                )
            finally:
                os.close(handed)
            if result.exit_code != 0:
                raise ExternalCommandError(
                    f"start of instance {ref.instance_id} failed: pg_ctl exited "
                    f"{result.exit_code}: {self._log_tail(ref)}",
                    exit_code=result.exit_code,
                )
        await self._wait_writable(ref)

    async def _wait_writable(self, ref: InstanceRef, limit: float = 600.0) -> None:
        """pg_ctl -w returns while recovery may still replay: wait for pg_is_in_recovery() = f."""
        deadline = time.monotonic() + limit
        last_error = ""
        while time.monotonic() < deadline:
            try:
                conn = await self.connect(ref)
                try:
                    if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                        return
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError) as exc:
                last_error = str(exc)
                if await self.status(ref) != "running":
                    raise ExternalCommandError(
                        f"instance {ref.instance_id} stopped during start-up: {self._log_tail(ref)}"
                    ) from None
            await asyncio.sleep(0.05)  # a cheap query; recovery ends at any moment
        raise ExternalCommandError(
            f"instance {ref.instance_id} did not become writable in {limit:.0f}s: {last_error}"
        )

    def _log_tail(self, ref: InstanceRef, count: int = 5) -> str:
        try:
            lines = Path(self.file_path(ref, "postgres.log")).read_text().splitlines()
        except OSError:
            return "(no server log)"
        return " | ".join(lines[-count:])

    async def stop(self, ref: InstanceRef, *, on_line: LineSink) -> None:
        """Fast shutdown; if it does not finish in time (a shutdown checkpoint waits for
        archive-push, which hangs while the repository is unreachable), shut down immediately:
        the next start runs crash recovery and loses nothing committed."""
        if ref.supervisor == "patroni":
            await self.patroni.stop(self._dir(ref))
            if await self._pg_ctl_status(ref) != "running":
                return  # Patroni stopped its Postgres; else it was killed: stop it below
        elif await self.status(ref) != "running":
            return
        for mode, wait in (("fast", "120"), ("immediate", "60")):
            result = await run_command(
                self._as_user(
                    [
                        self._pg("pg_ctl"),
                        "stop",
                        "-m",
                        mode,
                        "-w",
                        "-t",
                        wait,
                        "-D",
                        self.data_dir(ref),
                    ]
                ),
                on_line=on_line,
            )
            if result.exit_code == 0 or await self._pg_ctl_status(ref) != "running":
                return
            await on_line(f"{mode} shutdown of {ref.instance_id} did not finish in {wait}s")
        raise ExternalCommandError(
            f"stop of instance {ref.instance_id} failed: {result.tail(5)}",
            exit_code=result.exit_code,
        )

    async def fence_clients(self, ref: InstanceRef, *, fenced: bool) -> bool:
        """pg_hba.conf lives in the data directory here (a restore brings back the unfenced
        one, so a restored node is fenced again before it starts)."""
        hba = Path(self.data_dir(ref)) / "pg_hba.conf"
        if not hba.parent.is_dir():
            return False
        rules = spec_lines(await self.read_file(ref, USER_HBA_FILE))
        maps = spec_lines(await self.read_file(ref, USER_IDENT_FILE))
        changed = self._files.write(hba, client_hba(_HBA, fenced=fenced, user_rules=rules))
        return self._files.write(hba.parent / "pg_ident.conf", client_ident(maps)) or changed

    async def exec(
        self,
        ref: InstanceRef,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_line: LineSink | None = None,
    ) -> CommandResult:
        return await run_command(
            self._as_user(argv),
            env=env,
            on_line=on_line,
            grace_seconds=self._settings.cancel_grace_seconds,
        )

    async def run_one_off(
        self,
        ref: InstanceRef,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_line: LineSink | None = None,
    ) -> CommandResult:
        return await self.exec(ref, argv, env=env, on_line=on_line)

    async def remove_instance(self, ref: InstanceRef, *, on_line: LineSink) -> None:
        await self.stop(ref, on_line=on_line)
        shutil.rmtree(self._dir(ref), ignore_errors=True)

    async def connect(self, ref: InstanceRef, database: str = "postgres") -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            host=self.socket_dir(ref),
            port=ref.port,
            user="postgres",
            database=database,
            timeout=10,
        )
        return conn
