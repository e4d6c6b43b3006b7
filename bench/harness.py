"""A control plane server in a scratch dir for benchmarks, driven over its HTTP API."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
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

    def start(self, env: dict[str, str] | None = None) -> None:
        extra = env or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        env.update(
            {
                "CONTROLPLANE_DATA_DIR": str(self.data_dir),
                "CONTROLPLANE_PORT": str(self.port),
                # A raw run stops a node by hand for a second or two; a monitor sweep then would
                # start it under pgBackRest's feet. The monitor plays no part in what is timed.
                "CONTROLPLANE_MONITOR_INTERVAL": "3600",
                # Repositories live in the scratch dir, outside the default backup roots.
                "CONTROLPLANE_BACKUP_ROOTS": str(self.root),
                **extra,
            }
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

    def task(self, database_id: str, task_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/databases/{database_id}/tasks/{task_id}")
        task: dict[str, Any] = response.json()
        return task

    def wait_task(
        self, database_id: str, task_id: str, *, poll: float = 0.1, timeout: float = 900
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.task(database_id, task_id)
            if task["status"] in ("completed", "failed", "canceled"):
                assert task["status"] == "completed", task
                return task
            time.sleep(poll)
        raise AssertionError(f"task {task_id} did not finish in {timeout:.0f}s")

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
        return self.database(database_id)

    def database(self, database_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client.get(f"/v1/databases/{database_id}").json()
        return result

    def update_database(self, database_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Submit the full desired spec (passwords omitted are kept) and wait for the task."""
        updated = self.post(f"/v1/databases/{database_id}", {"spec": spec})
        self.wait_task(database_id, updated["task"]["task_id"], timeout=1800)
        return self.database(database_id)

    def pgbench_init(self, instance: dict[str, Any], scale: int) -> None:
        info = instance["connection_info"]
        subprocess.run(
            [
                str(PG_BIN / "pgbench"),
                "-i",
                "-q",
                "-s",
                str(scale),
                *_owner_login(instance),
                info["database"],
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PGPASSWORD": "bench-pass"},
        )

    def psql(self, instance: dict[str, Any], sql: str) -> str:
        """Run one statement as the database owner over TCP; its unaligned output."""
        result = subprocess.run(
            _psql_argv(instance, "-v", "ON_ERROR_STOP=1", "-AtXc", sql),
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": "bench-pass"},
            check=True,
        )
        return result.stdout.strip()

    def psql_superuser(self, instance: dict[str, Any], sql: str) -> str:
        """Run one statement as the superuser over the instances' private socket directory."""
        info = instance["connection_info"]
        argv = [str(PG_BIN / "psql"), "-h", str(Settings(data_dir=self.data_dir).run_dir / "i")]
        argv += ["-p", str(info["port"]), "-d", info["database"], "-v", "ON_ERROR_STOP=1"]
        return run_as_postgres([*argv, "-AtXc", sql]).stdout.decode().strip()

    def wait_writable(self, instance: dict[str, Any], timeout: float = 300) -> None:
        """Poll until the instance accepts connections and has left recovery."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run(
                _psql_argv(instance, "-AtXc", "SELECT pg_is_in_recovery()"),
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
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # a task stuck in a query: stop it harder
                self.proc.kill()
                self.proc.wait()
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


_PROGRESS = re.compile(r"^progress: ([0-9.]+) s, ([0-9.]+) tps")


class PgbenchLoad:
    """pgbench's TPC-B-like script against one instance in the background, as the Postgres OS
    user, for as long as a benchmark runs (at most `limit` seconds in all).

    A client whose server goes away (a restore stops the node) ends pgbench; the loop starts
    it again as soon as the node takes connections, so the load covers the whole operation and
    a node that is down simply serves no transactions. `tps(began, ended)` averages pgbench's
    per-second progress reports over a window, the seconds without a report counting as zero.
    """

    def __init__(
        self, instance: dict[str, Any], *, clients: int, limit: float, log_path: Path
    ) -> None:
        self.info = instance["connection_info"]
        self.clients = clients
        self.deadline = time.time() + limit
        self.log_path = log_path
        self.samples: list[tuple[float, float]] = []  # (end of a 1 s interval, its tps)
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="pgbench", daemon=True)

    def start(self) -> PgbenchLoad:
        """Start the load and give pgbench a moment to connect and report once."""
        self._thread.start()
        time.sleep(2)
        return self

    def __enter__(self) -> PgbenchLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _argv(self, seconds: int) -> list[str]:
        return [
            str(PG_BIN / "pgbench"),
            "-n",
            "-c",
            str(self.clients),
            "-j",
            str(min(self.clients, 2)),
            "-T",
            str(seconds),
            "-P",
            "1",
            "--progress-timestamp",
            "-h",
            self.info["host"],
            "-p",
            str(self.info["port"]),
            "-U",
            "admin",
            self.info["database"],
        ]

    def _loop(self) -> None:
        env = {**os.environ, "PGPASSWORD": "bench-pass", "HOME": "/tmp"}
        user = OS_USER if os.geteuid() == 0 else None
        with self.log_path.open("a") as log:
            while not self._stopping.is_set():
                remaining = int(self.deadline - time.time())
                if remaining < 1:
                    return
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self._proc = subprocess.Popen(
                        self._argv(remaining),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                        env=env,
                        user=user,
                        cwd="/tmp",
                    )
                assert self._proc.stderr is not None
                for line in self._proc.stderr:
                    log.write(line)
                    match = _PROGRESS.match(line)
                    if match:
                        self.samples.append((float(match[1]), float(match[2])))
                self._proc.wait()
                self._stopping.wait(0.05)  # the node is down: try again shortly

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
        self._thread.join(timeout=30)

    def baseline(self, seconds: float = 5.0) -> float:
        """pgbench's tps with nothing else going on: a few seconds' worth, printed."""
        began = time.time()
        time.sleep(seconds)
        rate = self.tps(began, time.time())
        print(f"load baseline (no backup or restore running): pgbench {rate:.0f} tps", flush=True)
        return rate

    def tps(self, began: float, ended: float) -> float:
        """Mean transactions per second between two `time.time()` instants."""
        done = 0.0
        for end, rate in list(self.samples):
            overlap = min(end, ended) - max(end - 1.0, began)
            if overlap > 0:
                done += rate * overlap
        return done / max(ended - began, 1e-9)


Action = Callable[[], None]


@dataclass
class Timings:
    """Every run of every action: seconds, and pgbench's tps during it when under load."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    tps: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def median_tps(self, name: str) -> float:
        return statistics.median(self.tps[name])


def compare(
    pairs: list[tuple[str, Action]],
    runs: int,
    extra: list[tuple[str, Action]] | None = None,
    *,
    load: PgbenchLoad | None = None,
    before_each: Action | None = None,
    after_each: Action | None = None,
    alternate: bool = True,
) -> Timings:
    """Time each action `runs` times, alternating which of `pairs` goes first (a run right after
    another finds a fresher checkpoint and a warmer cache), print every run and the medians
    (with pgbench's tps during each run under `load`). `before_each` and `after_each` run
    untimed around every timed action (preparation, checks). Without `alternate`, every run
    of the first pair comes before any of the second (when the second leaves a state the
    first cannot start from)."""
    timings = Timings()
    for name, _ in pairs + (extra or []):
        timings.seconds[name] = []
        timings.tps[name] = []
    rounds = (
        [pairs if run % 2 == 0 else list(reversed(pairs)) for run in range(runs)]
        if alternate
        else [[pair] for pair in pairs for _ in range(runs)]
    )
    for order in rounds:
        for name, action in order + (extra or []):
            if before_each is not None:
                before_each()
            began_wall = time.time()
            began = time.perf_counter()
            action()
            timings.seconds[name].append(time.perf_counter() - began)
            if load is not None:
                timings.tps[name].append(load.tps(began_wall, time.time()))
            if after_each is not None:
                after_each()
    for name, values in timings.seconds.items():
        runs_text = ", ".join(f"{v:.2f}" for v in values)
        line = f"{name:>4}: median {timings.median(name):.2f}s  (runs: {runs_text})"
        if load is not None:
            tps_text = ", ".join(f"{v:.0f}" for v in timings.tps[name])
            line += f"  pgbench tps median {timings.median_tps(name):.0f} (runs: {tps_text})"
        print(line, flush=True)
    return timings


def step_seconds(task: dict[str, Any]) -> dict[str, float]:
    """How long each completed step of a task took, from its recorded start and end."""
    found = {}
    for step in task["steps"]:
        if step.get("started_at") and step.get("completed_at"):
            began = datetime.fromisoformat(step["started_at"])
            ended = datetime.fromisoformat(step["completed_at"])
            found[step["name"]] = (ended - began).total_seconds()
    return found


def print_step_medians(title: str, tasks: list[dict[str, Any]]) -> None:
    """The median duration of every step over several runs of one task type, in step order."""
    if not tasks:
        return
    per_run = [step_seconds(task) for task in tasks]
    names = [step["name"] for step in tasks[0]["steps"]]
    parts = [f"{name} {statistics.median(r.get(name, 0.0) for r in per_run):.2f}" for name in names]
    print(f"  {title} steps (median s): " + ", ".join(parts), flush=True)


def _psql_argv(instance: dict[str, Any], *options: str) -> list[str]:
    """psql as the database owner over TCP to an instance of the API's database view."""
    return [
        str(PG_BIN / "psql"),
        *_owner_login(instance),
        "-d",
        instance["connection_info"]["database"],
        *options,
    ]


def _owner_login(instance: dict[str, Any]) -> list[str]:
    """Host, port and user of the database owner's TCP login to an instance."""
    info = instance["connection_info"]
    return ["-h", info["host"], "-p", str(info["port"]), "-U", "admin"]
