"""A real `controlplane serve` subprocess for integration tests: start, kill, restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from controlplane.server.etcd import stop_embedded_etcd
from controlplane.settings import Settings
from controlplane.spec.secrets import SecretBox
from tests.support.api import TERMINAL
from tests.support.os_user import as_os_user
from tests.support.pgcluster import PG_BIN, free_port


class ServerProcess:
    """One server on its own port and data dir, optionally on an external store."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str | None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.args = args or []
        self.database_url = database_url
        self.port = free_port()
        self.extra_env = env or {}
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def run_dir(self) -> Path:
        """The server's short directory under /tmp (its instances' unix sockets)."""
        return Settings(data_dir=self.data_dir).run_dir

    def instance_env(self, instance_id: str) -> dict[str, str]:
        """The repository secrets this instance's Postgres starts with (its sealed env file,
        opened with the server's key), on top of this process's environment."""
        box = SecretBox.for_settings(Settings(data_dir=self.data_dir))
        sealed = (self.data_dir / "instances" / instance_id / "postmaster.env").read_text()
        return {**os.environ, **box.decrypt(sealed.strip())}

    def client(self, timeout: float = 30.0, token: str | None = None) -> httpx.AsyncClient:
        """An HTTP client for this server, authenticated with its admin token (or `token`)."""
        headers = self.headers if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        env.update(
            {
                "CONTROLPLANE_DATA_DIR": str(self.data_dir),
                "CONTROLPLANE_PORT": str(self.port),
                "CONTROLPLANE_LEASE_SECONDS": "3",
                "CONTROLPLANE_POLL_INTERVAL": "0.2",
                "CONTROLPLANE_MONITOR_INTERVAL": "1",
                "CONTROLPLANE_CANCEL_GRACE_SECONDS": "3",
                "CONTROLPLANE_RETRY_BACKOFF_SECONDS": "0",
                # Tests keep their repositories in scratch directories.
                "CONTROLPLANE_BACKUP_ROOTS": "/tmp,/var/tmp,/var/backups",
            }
        )
        if self.database_url:
            env["CONTROLPLANE_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0, *, may_crash: bool = False) -> None:
        """Start `serve` and wait until it answers. Its port is picked free before the server
        binds it, so something else (an instance picking its own port) can take it meanwhile:
        then the server is started again on another port. With `may_crash`, a server that
        resumes a task and reaches its crash point (CONTROLPLANE_CRASH_AFTER_STEP) before it
        has answered is started: `killed_at_crash_point` then finds it killed."""
        for _ in range(3):
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._start_once(timeout)
                return
            except AssertionError:
                if may_crash and self.proc is not None and self.proc.returncode == -signal.SIGKILL:
                    return
                if "address already in use" not in self.log_text()[logged:]:
                    raise
                self.port = free_port()
        raise AssertionError(f"no free port for the server:\n{self.log_text()[-3000:]}")

    def _start_once(self, timeout: float) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "serve", *self.args],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self.token = (self.data_dir / "admin-token").read_text().strip()
                    return
            time.sleep(0.1)
        raise AssertionError(f"server did not become healthy:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the crash every resumable task must survive."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    async def killed_at_crash_point(
        self, database_id: str, task_id: str | None = None, timeout: float = 180.0
    ) -> None:
        """Wait until the server SIGKILLs itself where CONTROLPLANE_CRASH_AFTER_STEP says.
        When `task_id`'s task ends first, it never reached that point: fail at once, with its
        error, rather than after `timeout`."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        async with self.client() as client:
            while self.proc.poll() is None:
                assert time.monotonic() < deadline, (
                    f"the server did not reach its crash point in {timeout:g}s:\n"
                    + self.log_text()[-3000:]
                )
                if task_id is not None:
                    with contextlib.suppress(httpx.TransportError):  # it may die meanwhile
                        task = (
                            await client.get(f"/v1/databases/{database_id}/tasks/{task_id}")
                        ).json()
                        assert task["status"] not in TERMINAL, (
                            f"task {task_id} ended {task['status']} before the crash point: "
                            f"{task.get('error')}\n" + self.log_text()[-3000:]
                        )
                await asyncio.sleep(0.5)
        assert self.proc.returncode == -signal.SIGKILL, self.log_text()[-3000:]

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.terminate()
        self.start()

    def stop_instances(self) -> None:
        """Managed Postgres processes are not our children: stop each by its data dir, after
        the Patroni that would start it again (a frozen one too)."""
        for pid_file in self.data_dir.glob("*/**/patroni.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                if b"patroni" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
        pid_files = [
            *self.data_dir.glob("instances/*/pgdata/postmaster.pid"),
            *self.data_dir.glob("hosts/*/*/pgdata/postmaster.pid"),  # CONTROLPLANE_LOCAL_HOSTS
        ]
        for pid_file in pid_files:
            subprocess.run(
                as_os_user(
                    [str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-D", str(pid_file.parent)]
                ),
                check=False,
                capture_output=True,
            )
        store = self.data_dir / "store"
        if (store / "postmaster.pid").exists():
            subprocess.run(
                as_os_user([str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-D", str(store)]),
                check=False,
                capture_output=True,
            )
        # The embedded etcd outlives the server too (the instances Patroni runs need it).
        stop_embedded_etcd(self.data_dir)
        # The short socket directory under /tmp outlives the data dir.
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def create_token(self, name: str, scope: str) -> str:
        """`controlplane token create` against this server's store; returns the token."""
        result = subprocess.run(
            [sys.executable, "-m", "controlplane", "token", "create", name, "--scope", scope],
            env=self.env(),
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()


@contextlib.contextmanager
def serving(
    data_dir: Path,
    *,
    database_url: str | None,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
) -> Iterator[ServerProcess]:
    """A running server for one test (`serve` with `args`): stopped with its instances
    afterwards, its log's tail printed (pytest shows it when the test failed)."""
    proc = ServerProcess(data_dir, database_url=database_url, env=env, args=args)
    proc.start()
    try:
        yield proc
    finally:
        proc.terminate()
        proc.stop_instances()
        print("---- server log (tail) ----\n" + proc.log_text()[-8000:])
