"""A real Patroni cluster for tests: a one-member etcd and Patroni members run as the Postgres
OS user, each configured by `render_config`, every process stopped by its PID at the end."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from controlplane.orchestrator.patroni import (
    Credentials,
    PatroniClient,
    PatroniMember,
    adoption_statements,
    render_config,
)
from controlplane.system.postgres import hba
from tests.support.eventually import eventually
from tests.support.os_user import OS_USER, run_as_os_user
from tests.support.pgcluster import PG_BIN, free_port
from tests.support.processes import postmasters_under

PATRONI_BIN = "/usr/bin/patroni"
ETCD_BIN = "/usr/bin/etcd"
# The settings a node with pglogical runs on, cluster-wide; fsync off: tests never lose power.
PARAMETERS: dict[str, str | int | float | bool] = {
    "wal_level": "logical",
    "shared_preload_libraries": "pglogical",
    "hot_standby_feedback": "on",
    "track_commit_timestamp": "on",
    "max_replication_slots": 10,
    "max_wal_senders": 10,
    "max_worker_processes": 16,
    "fsync": "off",
}
# The client rules the control plane writes; Patroni must leave them as they are.
HBA = hba("Unix socket: its directory is private to the OS user.")


def _os_user_env() -> dict[str, str]:
    home = pwd.getpwnam(OS_USER).pw_dir if os.geteuid() == 0 else str(Path.home())
    return {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _spawn(argv: list[str], log: Path, *, as_os_user: bool) -> subprocess.Popen[bytes]:
    """Start argv detached (own session), output in `log`; exec'ed directly, so the Popen's PID
    is the program's own (runuser would fork and leave its own PID instead)."""
    user: dict[str, Any] = {}
    if as_os_user and os.geteuid() == 0:
        user = {"user": OS_USER, "group": OS_USER, "extra_groups": []}
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_os_user_env(),
            cwd=log.parent,
            **user,
        )


def _reap(process: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


class EtcdServer:
    """One etcd member on free ports, its data under `root/etcd`; clients reach it at
    `address` (an operator's etcd, when the members run somewhere loopback is not ours)."""

    def __init__(self, root: Path, address: str = "127.0.0.1") -> None:
        self.root = root
        self.address = address
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"{self.address}:{self.client_port}"

    def start(self) -> None:
        client, peer = f"http://{self.host}", f"http://127.0.0.1:{self.peer_port}"
        argv = [
            ETCD_BIN,
            *("--name", "t1", "--data-dir", str(self.root / "etcd")),
            *("--listen-client-urls", client, "--advertise-client-urls", client),
            *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
            *("--initial-cluster", f"t1={peer}", "--initial-cluster-state", "new"),
            *("--initial-cluster-token", secrets.token_hex(4)),
        ]
        self.process = _spawn(argv, self.root / "etcd.log", as_os_user=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{client}/health", timeout=1).json().get("health") == "true":
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError("etcd did not become healthy:\n" + _tail(self.root / "etcd.log"))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        if not _reap(self.process, 10):
            self.process.kill()
            _reap(self.process, 10)


class MemberProcess:
    """One Patroni member: its configuration file, log and process."""

    def __init__(self, member: PatroniMember, root: Path) -> None:
        self.member = member
        self.config_path = root / f"{member.name}.yml"
        self.log_path = root / f"{member.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.member.data_dir)

    def start(self) -> None:
        assert not self.running(), f"{self.member.name} already runs"
        self._write_config()
        self.process = _spawn([PATRONI_BIN, str(self.config_path)], self.log_path, as_os_user=True)

    def reconfigure(self, **changes: Any) -> None:
        """Change the member's configuration and rewrite its file (Patroni reads it on reload)."""
        self.member = msgspec.structs.replace(self.member, **changes)
        self._write_config()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def postmaster_pid(self) -> int | None:
        """The PID in postmaster.pid, if that process is still a postgres."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except (OSError, ValueError):
            return None
        return pid if argv0.endswith(b"postgres") else None

    def _write_config(self) -> None:
        # It holds passwords: readable by the OS user only.
        self.config_path.touch(mode=0o600)
        os.chown(self.config_path, *_os_user_ids())
        self.config_path.write_text(render_config(self.member))

    def kill(self) -> None:
        """SIGKILL Patroni and its postmaster: the member is gone without a word."""
        postmaster = self.postmaster_pid()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            _reap(self.process, 10)
        if postmaster is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGKILL)

    def log_tail(self) -> str:
        return _tail(self.log_path)


class PatroniHarness:
    """etcd plus Patroni members of one cluster under `root` (a dir the OS user can enter)."""

    def __init__(self, root: Path, *, scope: str = "app-n1") -> None:
        self.root = root
        self.scope = scope
        self.socket_dir = root / "run"
        self.socket_dir.mkdir(mode=0o700)
        os.chown(self.socket_dir, *_os_user_ids())
        self.etcd = EtcdServer(root)
        # Every member of a cluster logs in with the same roles and the same REST credentials.
        self.rest_auth = Credentials(username="patroni", password=secrets.token_hex(12))
        self.superuser = Credentials(username="postgres", password=secrets.token_hex(12))
        self.replication = Credentials(username="replicator", password=secrets.token_hex(12))
        self.rewind = Credentials(username="rewinder", password=secrets.token_hex(12))
        self.members: dict[str, MemberProcess] = {}

    def add_member(self, name: str, **overrides: Any) -> MemberProcess:
        """A member on free ports; its data dir is not created (Patroni clones into it)."""
        home = self.root / name
        home.mkdir(mode=0o700)
        os.chown(home, *_os_user_ids())
        fields: dict[str, Any] = {
            "scope": self.scope,
            "name": name,
            "rest_host": "127.0.0.1",
            "rest_port": free_port(),
            "rest_auth": self.rest_auth,
            "etcd_hosts": (self.etcd.host,),
            "pg_host": "127.0.0.1",
            "pg_port": free_port(),
            "data_dir": str(home / "data"),
            "bin_dir": str(PG_BIN),
            "socket_dir": str(self.socket_dir),
            "pgpass": str(home / "pgpass"),
            "superuser": self.superuser,
            "replication": self.replication,
            "rewind": self.rewind,
            "parameters": dict(PARAMETERS),
            "archive_command": f"true {home}/data/%p",
        }
        fields.update(overrides)
        process = MemberProcess(PatroniMember(**fields), self.root)
        self.members[name] = process
        return process

    def create_data_dir(self, name: str, *, extra_conf: str = "", setup_sql: str = "") -> None:
        """What the control plane does before Patroni adopts an instance: initdb, its own
        configuration and client rules, the roles Patroni expects (and `setup_sql`), then a
        clean stop."""
        member = self.members[name].member
        data = member.data_dir
        run_as_os_user(
            [
                str(PG_BIN / "initdb"),
                *("-D", data, "-U", member.superuser.username, "-E", "UTF8"),
                *("--locale=C.UTF-8", "--data-checksums"),
                *("--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"),
            ]
        )
        with (Path(data) / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'controlplane.conf'\n")
        files = {
            "controlplane.conf": f"port = {member.pg_port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\nlisten_addresses = ''\n{extra_conf}",
            "pg_hba.conf": HBA,
        }
        for file_name, text in files.items():
            # Owned by the OS user: pg_rewind rewrites every file of the data directory.
            path = Path(data) / file_name
            path.write_text(text)
            path.chmod(0o600)
            os.chown(path, *_os_user_ids())
        log = str(self.root / f"{name}-adopt.log")
        run_as_os_user([str(PG_BIN / "pg_ctl"), "start", "-w", "-D", data, "-l", log])
        try:
            statements = [*adoption_statements(member), *([setup_sql] if setup_sql else [])]
            run_as_os_user(self._psql(member, statements))
        finally:
            run_as_os_user([str(PG_BIN / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", data])

    def _psql(self, member: PatroniMember, statements: list[str]) -> list[str]:
        """psql running `statements` in one session, each as its own command."""
        commands = [arg for sql in statements for arg in ("-c", sql)]
        return [
            str(PG_BIN / "psql"),
            *("-h", str(self.socket_dir), "-p", str(member.pg_port), "-U", "postgres"),
            *("-d", "postgres", "-AtX", "-v", "ON_ERROR_STOP=1", *commands),
        ]

    def client(self, name: str) -> PatroniClient:
        return PatroniClient.for_member(self.members[name].member)

    async def connect(self, name: str, database: str = "postgres") -> asyncpg.Connection:  # type: ignore[type-arg]
        member = self.members[name].member
        conn: asyncpg.Connection = await asyncpg.connect(  # type: ignore[type-arg]
            host=str(self.socket_dir),
            port=member.pg_port,
            user="postgres",
            database=database,
            timeout=5,
        )
        return conn

    async def query(self, name: str, sql: str, *args: object) -> Any:
        """The first column of the first row of `sql` on member `name`."""
        conn = await self.connect(name)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def try_query(self, name: str, sql: str) -> Any:
        """Like `query`, but None while the member cannot answer it (down, starting, not yet
        replayed the table, or restarting under the query: Patroni restarts a replica to load
        a slot copy, and asyncpg then reports its own protocol state)."""
        try:
            return await self.query(name, sql)
        except (
            TimeoutError,
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
        ):
            return None

    async def wait_for_leader(self, *, timeout: float = 60, among: list[str] | None = None) -> str:
        """The member that answers `/primary` 200 and accepts writes."""
        names = among or [n for n, m in self.members.items() if m.running()]

        async def probe() -> str | None:
            for name in names:
                async with self.client(name) as client:
                    with contextlib.suppress(Exception):
                        if await client.is_primary() and not await self.query(
                            name, "SELECT pg_is_in_recovery()"
                        ):
                            return name
            return None

        return await eventually(probe, timeout=timeout, interval=0.25, what="a writable leader")

    async def wait_for_streaming(self, name: str, *, timeout: float = 60) -> None:
        """Until member `name` is a replica whose WAL receiver streams from the leader, and the
        DCS says so too (GET /cluster lags the member by up to loop_wait)."""

        async def probe() -> bool:
            with contextlib.suppress(Exception):
                status = await self.query(name, "SELECT status FROM pg_stat_wal_receiver")
                async with self.client(name) as client:
                    listed = [m for m in (await client.cluster()).members if m.name == name]
                    return (
                        status == "streaming"
                        and await client.is_replica()
                        and listed[0].state in ("running", "streaming")
                        and isinstance(listed[0].lag, int)
                    )
            return False

        await eventually(probe, timeout=timeout, interval=0.25, what=f"{name} streaming")

    def close(self) -> None:
        """SIGTERM every Patroni (each stops its Postgres), then etcd; SIGKILL stragglers and
        any postmaster left under `root`."""
        running = [m for m in self.members.values() if m.running()]
        for member in running:
            assert member.process is not None
            member.process.terminate()
        deadline = time.monotonic() + 30
        for member in running:
            assert member.process is not None
            if not _reap(member.process, max(0.1, deadline - time.monotonic())):
                # Its own process group (a new session): pg_basebackup or pg_rewind go with it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(member.process.pid, signal.SIGKILL)
                _reap(member.process, 10)
        for member in self.members.values():
            pid = member.postmaster_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in postmasters_under(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.etcd.stop()

    def logs(self) -> str:
        parts = [f"---- {n} ----\n{m.log_tail()}" for n, m in self.members.items()]
        return "\n".join(parts)


def _os_user_ids() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    entry = pwd.getpwnam(OS_USER)
    return entry.pw_uid, entry.pw_gid


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""
