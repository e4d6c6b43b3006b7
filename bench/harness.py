"""A control plane server in a scratch dir for benchmarks, driven over its HTTP API."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from controlplane.settings import Settings

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = os.environ.get("CONTROLPLANE_OS_USER", "postgres")


def run_as_postgres(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run argv as the Postgres OS user (pgBackRest and Postgres must not run as root)."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", OS_USER, "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, **kwargs)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BenchServer:
    """`controlplane serve` with an embedded store under `root`."""

    def __init__(self, root: Path) -> None:
        root.chmod(0o755)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(OS_USER)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        self.root = root
        self.data_dir = root / "cp"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        env.update(
            {"CONTROLPLANE_DATA_DIR": str(self.data_dir), "CONTROLPLANE_PORT": str(self.port)}
        )
        log = (self.root / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "serve", "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.client.get("/health").status_code == 200:
                    token = (self.data_dir / "admin-token").read_text().strip()
                    self.client.headers["Authorization"] = f"Bearer {token}"
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not start")

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(path, json=body)
        assert response.status_code == 202, response.text
        result: dict[str, Any] = response.json()
        return result

    def wait_task(self, database_id: str, task_id: str, *, poll: float = 0.1) -> dict[str, Any]:
        while True:
            task: dict[str, Any] = self.client.get(
                f"/v1/databases/{database_id}/tasks/{task_id}"
            ).json()
            if task["status"] in ("completed", "failed", "canceled"):
                assert task["status"] == "completed", task
                return task
            time.sleep(poll)

    def create_database(self, database_id: str, **spec: Any) -> dict[str, Any]:
        body = {
            "id": database_id,
            "spec": {
                "database_name": "app",
                "database_users": [
                    {
                        "username": "admin",
                        "password": "bench-pass",
                        "db_owner": True,
                        "attributes": ["LOGIN"],
                    }
                ],
                "nodes": [{"name": "n1"}],
                **spec,
            },
        }
        created = self.post("/v1/databases", body)
        self.wait_task(database_id, created["task"]["task_id"])
        result: dict[str, Any] = self.client.get(f"/v1/databases/{database_id}").json()
        return result

    def pgbench_init(self, instance: dict[str, Any], scale: int) -> None:
        info = instance["connection_info"]
        subprocess.run(
            [
                str(PG_BIN / "pgbench"),
                "-i",
                "-q",
                "-s",
                str(scale),
                "-h",
                info["host"],
                "-p",
                str(info["port"]),
                "-U",
                "admin",
                info["database"],
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PGPASSWORD": "bench-pass"},
        )

    def wait_writable(self, instance: dict[str, Any], timeout: float = 300) -> None:
        """Poll until the instance accepts connections and has left recovery."""
        info = instance["connection_info"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run(
                [
                    str(PG_BIN / "psql"),
                    "-h",
                    info["host"],
                    "-p",
                    str(info["port"]),
                    "-U",
                    "admin",
                    "-d",
                    info["database"],
                    "-AtXc",
                    "SELECT pg_is_in_recovery()",
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "PGPASSWORD": "bench-pass"},
                check=False,
            )
            if result.stdout.strip() == "f":
                return
            time.sleep(0.05)
        raise AssertionError("instance did not become writable")

    def stop(self) -> None:
        """Stop the server, then every instance it started (they are not its children)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        for pid_file in self.data_dir.glob("instances/*/pgdata/postmaster.pid"):
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    OS_USER,
                    "--",
                    str(PG_BIN / "pg_ctl"),
                    "stop",
                    "-m",
                    "immediate",
                    "-D",
                    str(pid_file.parent),
                ],
                check=False,
                capture_output=True,
            )
        # The instances' short socket directory under /tmp outlives the data dir otherwise.
        shutil.rmtree(Settings(data_dir=self.data_dir).run_dir, ignore_errors=True)
        self.client.close()


Action = Callable[[], None]


def compare(
    pairs: list[tuple[str, Action]], runs: int, extra: list[tuple[str, Action]] | None = None
) -> dict[str, float]:
    """Time each action `runs` times, alternating which of `pairs` goes first (a run right after
    another finds a fresher checkpoint and a warmer cache), print every run and the medians."""
    results: dict[str, list[float]] = {name: [] for name, _ in pairs + (extra or [])}
    for run in range(runs):
        order = pairs if run % 2 == 0 else list(reversed(pairs))
        for name, action in order + (extra or []):
            began = time.perf_counter()
            action()
            results[name].append(time.perf_counter() - began)
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, values in results.items():
        runs_text = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:>4}: median {medians[name]:.2f}s  (runs: {runs_text})")
    return medians
