"""The etcd Patroni uses: a real embedded one-member etcd under the data dir, or the operator's."""

from __future__ import annotations

import base64
import os
import pwd
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest

from controlplane.errors import DependencyError
from controlplane.server.etcd import EmbeddedEtcd, EtcdFiles, stop_embedded_etcd
from controlplane.settings import Settings
from tests.support.eventually import eventually
from tests.support.os_user import OS_USER


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def _put(endpoint: str, key: str, value: str) -> None:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        response = await client.post(
            f"http://{endpoint}/v3/kv/put", json={"key": _b64(key), "value": _b64(value)}
        )
    response.raise_for_status()


async def _get(endpoint: str, key: str) -> str | None:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        response = await client.post(f"http://{endpoint}/v3/kv/range", json={"key": _b64(key)})
    response.raise_for_status()
    kvs = response.json().get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def settings(scratch_dir: Path) -> Settings:
    return Settings(data_dir=scratch_dir / "cp")


@pytest.fixture
async def etcd(settings: Settings) -> AsyncIterator[EmbeddedEtcd]:
    """A started embedded etcd, stopped by its PID afterwards whatever the test did."""
    service = EmbeddedEtcd(settings)
    try:
        await service.start()
        yield service
    finally:
        stop_embedded_etcd(settings.data_path)


async def test_embedded_etcd_runs_detached_as_os_user_and_serves_v3(
    etcd: EmbeddedEtcd, settings: Settings
) -> None:
    """The embedded etcd listens on 127.0.0.1 only, runs as the OS user outside our process
    tree, keeps its data in a private directory and stores keys through the v3 JSON gateway."""
    files = EtcdFiles(settings.data_path)
    record = msgspec.json.decode(files.record.read_bytes())
    [endpoint] = etcd.endpoints()
    assert endpoint == f"127.0.0.1:{record['client_port']}"
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        health = (await client.get(f"http://{endpoint}/health")).json()
    assert health["health"] == "true"

    pid = etcd.pid
    assert pid is not None and pid == int(files.pid.read_text())
    owner = pwd.getpwnam(OS_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
    assert Path(f"/proc/{pid}").stat().st_uid == owner
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[0] == str(settings.etcd_bin).encode()
    urls = [a for a in argv if a.startswith(b"http://")]
    assert urls and all(u.startswith(b"http://127.0.0.1:") for u in urls)
    stat_fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    assert int(stat_fields[1]) != os.getpid()  # not our child
    assert int(stat_fields[3]) != os.getsid(0)  # nor in our session
    data = files.data.stat()
    assert data.st_mode & 0o777 == 0o700 and data.st_uid == owner

    await _put(endpoint, "/service/storefront/leader", "n1-a")
    assert await _get(endpoint, "/service/storefront/leader") == "n1-a"


async def test_second_start_adopts_the_running_etcd(etcd: EmbeddedEtcd, settings: Settings) -> None:
    """A restarted control plane adopts the etcd that outlived it: same PID, same ports."""
    first_pid = etcd.pid
    again = EmbeddedEtcd(settings)
    assert await again.start() == etcd.endpoints()
    assert again.pid == first_pid
    data_dir = str(EtcdFiles(settings.data_path).data).encode()
    etcds = [pid for pid in _pids() if _alive(pid) and data_dir in _argv(pid)]
    assert etcds == [first_pid]


async def test_start_after_stop_reuses_ports_and_data(
    etcd: EmbeddedEtcd, settings: Settings
) -> None:
    """After stop() the process is gone; the next start is on the same ports with the same keys."""
    [endpoint] = etcd.endpoints()
    await _put(endpoint, "/service/storefront/config", "kept")
    pid = etcd.pid
    assert pid is not None
    await etcd.stop()
    assert not _alive(pid)
    assert etcd.pid is None
    assert not EtcdFiles(settings.data_path).pid.exists()

    restarted = EmbeddedEtcd(settings)
    assert await restarted.start() == [endpoint]
    assert restarted.pid not in (None, pid)
    assert await _get(endpoint, "/service/storefront/config") == "kept"


async def test_failed_start_reports_the_etcd_log(settings: Settings, scratch_dir: Path) -> None:
    """An etcd that exits at once fails start() with the end of its log in the message."""
    fake = scratch_dir / "etcd"
    fake.write_text('#!/bin/sh\necho "etcdmain: listen tcp: address already in use" >&2\nexit 1\n')
    fake.chmod(0o755)
    broken = msgspec.structs.replace(settings, etcd_bin=fake)
    with pytest.raises(DependencyError, match="address already in use"):
        await EmbeddedEtcd(broken, start_timeout=10).start()


async def test_recorded_port_taken_is_refused_in_words(
    etcd: EmbeddedEtcd, settings: Settings
) -> None:
    """A recorded port another process took is named, rather than left to etcd's log."""
    [endpoint] = etcd.endpoints()
    port = int(endpoint.rpartition(":")[2])
    await etcd.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(DependencyError, match=f"client port {port} .* taken"):
            await EmbeddedEtcd(settings).start()


async def test_external_hosts_pointing_at_a_running_etcd_are_used(
    etcd: EmbeddedEtcd, scratch_dir: Path
) -> None:
    """With CONTROLPLANE_ETCD_HOSTS set, a healthy cluster is used and nothing is started."""
    [endpoint] = etcd.endpoints()
    other = Settings(data_dir=scratch_dir / "other", etcd_hosts=f"127.0.0.1:1, {endpoint}")
    external = EmbeddedEtcd(other)
    assert await external.start() == ["127.0.0.1:1", endpoint]
    assert external.endpoints() == ["127.0.0.1:1", endpoint]
    assert external.pid is None
    assert not (other.data_path / "etcd").exists()
    await external.stop()  # not ours: left running
    assert etcd.pid is not None and _alive(etcd.pid)


@pytest.mark.parametrize(
    ("hosts", "error", "message"),
    [
        ("nohost", ValueError, "CONTROLPLANE_ETCD_HOSTS: 'nohost' is not host:port"),
        ("http://127.0.0.1:2379", ValueError, "CONTROLPLANE_ETCD_HOSTS: 'http://"),
        ("closed", DependencyError, "CONTROLPLANE_ETCD_HOSTS: no etcd endpoint answered healthy"),
    ],
)
async def test_bad_external_hosts_are_refused_naming_the_setting(
    scratch_dir: Path, hosts: str, error: type[Exception], message: str
) -> None:
    """A malformed or unreachable CONTROLPLANE_ETCD_HOSTS fails start() and says which setting."""
    if hosts == "closed":
        hosts = f"127.0.0.1:{_closed_port()}"
    service = EmbeddedEtcd(Settings(data_dir=scratch_dir / "cp", etcd_hosts=hosts))
    with pytest.raises(error, match=message) as caught:
        await service.start()
    if hosts.startswith("127.0.0.1:"):
        assert hosts in str(caught.value)
    with pytest.raises(RuntimeError):
        service.endpoints()


async def test_stop_helper_finds_etcd_by_its_pid_file(
    etcd: EmbeddedEtcd, settings: Settings
) -> None:
    """The cleanup helper stops the etcd of a data dir and reports none the second time."""
    pid = etcd.pid
    assert pid is not None
    assert stop_embedded_etcd(settings.data_path) == pid
    await eventually(lambda: _gone(pid), timeout=5, what=f"etcd {pid} to exit")
    assert stop_embedded_etcd(settings.data_path) is None


async def _gone(pid: int) -> bool:
    return not _alive(pid)
