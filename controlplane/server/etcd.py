"""Etcd: the DCS Patroni needs — an operator's cluster (`CONTROLPLANE_ETCD_HOSTS`), or a
one-member etcd under `<data dir>/etcd` that the control plane starts and that outlives it.

The embedded etcd is not a child of `serve`: Patroni-managed instances keep running while the
control plane stops or restarts, and they need their DCS all that time. Its PID is kept in
`etcd/etcd.pid` and its ports, cluster token and binary in `etcd/endpoint.json`, so the next
start adopts the running one, or starts it again on the same ports and data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import platform
import re
import secrets
import signal
import socket
import time
from pathlib import Path

import httpx
import msgspec

from controlplane.errors import DependencyError
from controlplane.settings import Settings
from controlplane.system.files import OwnedFiles
from controlplane.system.process import as_user, run_command

log = logging.getLogger(__name__)

ETCD_DIR = "etcd"
MEMBER_NAME = "cp"
# The DCS of a few Patroni clusters holds kilobytes: a small quota and hourly compaction keep a
# runaway writer from filling the disk (etcd raises a NOSPACE alarm instead).
QUOTA_BACKEND_BYTES = 256 * 1024 * 1024
LOG_ROTATE_BYTES = 10 * 1024 * 1024
# The shell puts etcd in the background with its output in the log and prints its PID: etcd is
# then nobody's child here, and `$!` is etcd itself (the background job execs it directly).
_DETACH = 'umask 077; log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
_HOST_PORT = re.compile(
    r"^(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$"
)


class EtcdRecord(msgspec.Struct, kw_only=True):
    """What `endpoint.json` keeps between starts."""

    client_port: int
    peer_port: int
    cluster_token: str
    etcd_bin: str


class EtcdFiles:
    """Where the embedded etcd of one data directory keeps its things."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / ETCD_DIR
        self.data = self.root / "data"
        self.log = self.root / "etcd.log"
        self.pid = self.root / "etcd.pid"
        self.record = self.root / "endpoint.json"

    def read_record(self) -> EtcdRecord | None:
        try:
            return msgspec.json.decode(self.record.read_bytes(), type=EtcdRecord)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    def read_pid(self) -> int | None:
        try:
            return int(self.pid.read_text().strip())
        except (OSError, ValueError):
            return None

    def log_tail(self, count: int = 10) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no etcd log)"
        return "\n".join(lines[-count:]) or "(etcd log is empty)"


def parse_etcd_hosts(value: str) -> list[str]:
    """The `host:port` endpoints of `CONTROLPLANE_ETCD_HOSTS`; ValueError naming the variable
    when an entry is not one, or none is given."""
    endpoints: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        match = _HOST_PORT.match(entry)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise ValueError(
                f"CONTROLPLANE_ETCD_HOSTS: {entry!r} is not host:port (a host name or address "
                "and a port from 1 to 65535, without a scheme)"
            )
        endpoints.append(entry)
    if not endpoints:
        raise ValueError("CONTROLPLANE_ETCD_HOSTS lists no host:port")
    return endpoints


class EmbeddedEtcd:
    """The etcd Patroni uses: the operator's cluster when `etcd_hosts` is set, otherwise a
    one-member etcd on 127.0.0.1 under `<data dir>/etcd`, run as the OS user."""

    def __init__(
        self, settings: Settings, *, start_timeout: float = 30.0, stop_grace: float = 10.0
    ) -> None:
        self._settings = settings
        self._files = EtcdFiles(settings.data_path)
        self._owned = OwnedFiles(settings.os_user)
        self._start_timeout = start_timeout
        self._stop_grace = stop_grace
        self._endpoints: list[str] | None = None

    @property
    def files(self) -> EtcdFiles:
        return self._files

    @property
    def pid(self) -> int | None:
        """The PID of the embedded etcd while it runs; None otherwise (or for an external one)."""
        if self._settings.etcd_hosts is not None:
            return None
        return running_etcd(self._files)

    def endpoints(self) -> list[str]:
        """The `host:port` client endpoints Patroni uses; only after `start`."""
        if self._endpoints is None:
            raise RuntimeError("etcd endpoints are known only after start()")
        return list(self._endpoints)

    async def start(self) -> list[str]:
        """Check the operator's cluster, or adopt or start the embedded etcd; return the client
        endpoints once one of them answers healthy."""
        if self._settings.etcd_hosts is not None:
            endpoints = parse_etcd_hosts(self._settings.etcd_hosts)
            await _require_healthy_external(endpoints)
            log.info("etcd: using the cluster at %s", ",".join(endpoints))
        else:
            endpoints = [await self._start_embedded()]
        self._endpoints = endpoints
        return list(endpoints)

    async def stop(self) -> None:
        """Stop the embedded etcd (SIGTERM, then SIGKILL after the grace period). `serve` does
        not call this: the instances Patroni runs need their DCS while it is away."""
        if self._settings.etcd_hosts is not None:
            return
        await asyncio.to_thread(stop_embedded_etcd, self._settings.data_path, self._stop_grace)

    async def _start_embedded(self) -> str:
        record = await asyncio.to_thread(self._prepare)
        endpoint = f"127.0.0.1:{record.client_port}"
        pid = await asyncio.to_thread(running_etcd, self._files)
        if pid is not None:
            await self._wait_healthy(pid, endpoint, what="running etcd")
            log.info("etcd: adopted the running one (pid %d) at %s", pid, endpoint)
            return endpoint
        await asyncio.to_thread(self._before_spawn, record)
        pid = await self._spawn(record)
        await self._wait_healthy(pid, endpoint, what="etcd")
        log.info("etcd: started (pid %d) at %s, data in %s", pid, endpoint, self._files.data)
        return endpoint

    def _prepare(self) -> EtcdRecord:
        """Directories owned by the OS user (0700), and the ports and token: recorded ones, or
        new ones on the first start."""
        data_path = self._settings.data_path
        data_path.mkdir(parents=True, exist_ok=True)
        # The OS user must be able to traverse the data dir to reach its own subdirectories.
        data_path.chmod(0o755)
        self._owned.private_dir(self._files.root, 0o700)
        self._owned.private_dir(self._files.data, 0o700)
        etcd_bin = str(self._settings.etcd_bin)
        record = self._files.read_record()
        if record is not None and (record.etcd_bin == etcd_bin or running_etcd(self._files)):
            # A running etcd keeps the binary it was started from until it is restarted.
            return record
        if record is None:
            client_port, peer_port = _free_ports()
            record = EtcdRecord(
                client_port=client_port,
                peer_port=peer_port,
                cluster_token=f"cp-{secrets.token_hex(8)}",
                etcd_bin=etcd_bin,
            )
        record.etcd_bin = etcd_bin
        self._owned.write(self._files.record, msgspec.json.encode(record).decode() + "\n")
        return record

    def _before_spawn(self, record: EtcdRecord) -> None:
        """Refuse early, in words, what etcd would refuse with a stack of log lines."""
        if not os.access(record.etcd_bin, os.X_OK):
            raise DependencyError(
                f"etcd binary {record.etcd_bin} is missing or not executable "
                "(CONTROLPLANE_ETCD_BIN)"
            )
        for name, port in (("client", record.client_port), ("peer", record.peer_port)):
            if not _port_is_free(port):
                raise DependencyError(
                    f"etcd {name} port {port} recorded in {self._files.record} is taken by another "
                    "process: free it, or remove that file to choose new ports"
                )
        self._files.pid.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self._files.log.stat().st_size > LOG_ROTATE_BYTES:
                self._files.log.replace(self._files.log.with_name("etcd.log.1"))

    async def _spawn(self, record: EtcdRecord) -> int:
        client_url = f"http://127.0.0.1:{record.client_port}"
        peer_url = f"http://127.0.0.1:{record.peer_port}"
        argv = [
            record.etcd_bin,
            *("--name", MEMBER_NAME),
            *("--data-dir", str(self._files.data)),
            *("--listen-client-urls", client_url),
            *("--advertise-client-urls", client_url),
            *("--listen-peer-urls", peer_url),
            *("--initial-advertise-peer-urls", peer_url),
            *("--initial-cluster", f"{MEMBER_NAME}={peer_url}"),
            *("--initial-cluster-state", "new"),
            *("--initial-cluster-token", record.cluster_token),
            *("--auto-compaction-mode", "periodic"),
            *("--auto-compaction-retention", "1"),
            *("--quota-backend-bytes", str(QUOTA_BACKEND_BYTES)),
            *("--snapshot-count", "10000"),
            *("--logger", "zap"),
            *("--log-outputs", "stderr"),
        ]
        result = await run_command(
            as_user(
                ["sh", "-c", _DETACH, "sh", str(self._files.log), *argv], self._settings.os_user
            ),
            env=_etcd_environment(),
            inherit_env=False,
        )
        pid_text = result.lines[-1].strip() if result.lines else ""
        if result.exit_code != 0 or not pid_text.isdigit():
            raise DependencyError(
                f"etcd failed to start: the launcher exited {result.exit_code}: {result.tail(5)}"
            )
        pid = int(pid_text)
        await asyncio.to_thread(self._owned.write, self._files.pid, f"{pid}\n")
        return pid

    async def _wait_healthy(self, pid: int, endpoint: str, *, what: str) -> None:
        deadline = time.monotonic() + self._start_timeout
        reason = "not asked yet"
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                problem = await _health_problem(client, endpoint)
                if problem is None:
                    return
                reason = problem
                if not await asyncio.to_thread(_is_etcd_of, pid, self._files):
                    raise DependencyError(
                        f"{what} (pid {pid}) exited before it was healthy; its log ends:\n"
                        f"{await asyncio.to_thread(self._files.log_tail)}"
                    )
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.1)
        raise DependencyError(
            f"{what} (pid {pid}) at {endpoint} not healthy after {self._start_timeout:.0f}s "
            f"({reason}); its log ends:\n{await asyncio.to_thread(self._files.log_tail)}"
        )


def stop_embedded_etcd(data_dir: Path, grace_seconds: float = 10.0) -> int | None:
    """Stop the embedded etcd of the control plane data directory `data_dir`, found by its pid
    file (SIGTERM, then SIGKILL after `grace_seconds`); return its PID, None when none ran."""
    files = EtcdFiles(data_dir.resolve())
    pid = running_etcd(files)
    if pid is None:
        files.pid.unlink(missing_ok=True)
        return None
    log.info("etcd: stopping pid %d", pid)
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _is_etcd_of(pid, files) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _is_etcd_of(pid, files):
            files.pid.unlink(missing_ok=True)
            return pid
        log.warning("etcd: pid %d still running %.0fs after %s", pid, wait, sig.name)
    raise DependencyError(f"etcd (pid {pid}) did not stop, even after SIGKILL")


def running_etcd(files: EtcdFiles) -> int | None:
    """The PID of the etcd serving `files`: the one in the pid file, or (the pid file lost
    between start and write) any process that is that etcd."""
    if not files.root.is_dir():
        return None
    pid = files.read_pid()
    if pid is not None and _is_etcd_of(pid, files):
        return pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_etcd_of(int(entry.name), files):
            return int(entry.name)
    return None


def _is_etcd_of(pid: int, files: EtcdFiles) -> bool:
    """True while `pid` is a live (not zombie) etcd on this data dir, run by the owner of the
    etcd directory: a reused PID, or a look-alike of another user, is not ours to adopt or
    stop."""
    proc = Path(f"/proc/{pid}")
    try:
        args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
        data = str(files.data)
        if not any(a == "--data-dir" and b == data for a, b in itertools.pairwise(args)):
            return False
        state = (proc / "stat").read_text().rpartition(")")[2].split()[:1]
        owner = proc.stat().st_uid
        expected_owner = files.root.stat().st_uid
    except OSError:
        return False
    if not state or state[0] in ("Z", "X", "x"):
        return False  # a zombie: dead, though nobody may reap it for a long time
    record = files.read_record()
    binary_ok = args[0] == record.etcd_bin if record else os.path.basename(args[0]) == "etcd"
    return binary_ok and owner == expected_owner


async def _health_problem(client: httpx.AsyncClient, endpoint: str) -> str | None:
    """None when etcd at `endpoint` says it is healthy; otherwise what is wrong, in words."""
    try:
        response = await client.get(f"http://{endpoint}/health")
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        health = json.loads(response.text).get("health")
    except (ValueError, AttributeError):
        health = None
    if response.status_code == 200 and health == "true":
        return None
    return f"/health answered {response.status_code}: {response.text.strip()[:200]}"


async def _require_healthy_external(endpoints: list[str]) -> None:
    problems: list[str] = []
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        for endpoint in endpoints:
            problem = await _health_problem(client, endpoint)
            if problem is None:
                return
            problems.append(f"{endpoint}: {problem}")
    raise DependencyError(
        "CONTROLPLANE_ETCD_HOSTS: no etcd endpoint answered healthy (" + "; ".join(problems) + ")"
    )


def _free_ports() -> tuple[int, int]:
    """Two distinct free ports on 127.0.0.1 (both held open while choosing)."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second,
    ):
        first.bind(("127.0.0.1", 0))
        second.bind(("127.0.0.1", 0))
        return int(first.getsockname()[1]), int(second.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _etcd_environment() -> dict[str, str]:
    """None of ours: etcd reads every `ETCD_*` variable as a flag."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    if platform.machine().lower() in ("aarch64", "arm64"):
        # etcd 3.4 starts on arm64 only when told that this is deliberate.
        env["ETCD_UNSUPPORTED_ARCH"] = "arm64"
    return env


async def delete_prefix(endpoints: list[str], prefix: str) -> int:
    """Delete every key under `prefix` (etcd's v3 JSON gateway); the number deleted."""
    key = prefix.encode()
    end = key[:-1] + bytes([key[-1] + 1])
    body = {
        "key": base64.b64encode(key).decode(),
        "range_end": base64.b64encode(end).decode(),
    }
    last: Exception | None = None
    async with httpx.AsyncClient(timeout=10) as client:
        for endpoint in endpoints:
            try:
                response = await client.post(f"http://{endpoint}/v3/kv/deleterange", json=body)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                last = exc
                continue
            return int(response.json().get("deleted", 0))
    raise DependencyError(f"etcd did not delete {prefix}: {last}")
