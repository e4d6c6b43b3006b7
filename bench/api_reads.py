"""Read throughput of the API under monitoring load, as a ratio to `/health`.

Usage: .venv/bin/python -m bench.api_reads [--databases 100] [--nodes 3] [--tasks 20]
                                           [--clients 50] [--seconds 5]

Starts `controlplane serve` (embedded store, no worker, monitor idle) and inserts database,
instance and task rows straight into its store: no instance runs, so what is measured is the
API and the store, as a dashboard polling a fleet sees them. Then, route by route, `--clients`
concurrent clients send GETs for `--seconds`, while a writer changes one of db-0's instances
and one of its tasks `--writes` times a second (each change voids the kept answers that show
it, as a busy fleet's would); prints requests/s per route and its ratio to `/health`
(target: >= 0.5 for every read route).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from bench.harness import BenchServer
from bench.scheduler import populate
from controlplane.settings import Settings
from controlplane.store import tasks
from controlplane.store.pool import create_pool


async def populate_store(server: BenchServer, databases: int, nodes: int, task_count: int) -> None:
    """The databases and instances (as bench.scheduler makes them), and `task_count` finished
    backup tasks of db-0 with their steps, straight into the server's embedded store."""
    pool = await create_pool(store_dsn(server), min_size=1, max_size=2)
    try:
        await populate(pool, databases, nodes, 1)
        ids = [tasks.uuid7() for _ in range(task_count)]
        await pool.executemany(
            "INSERT INTO tasks (task_id, database_id, node_name, type, status, actor, result,"
            " started_at, completed_at) VALUES ($1, 'db-0', 'n1', 'node_backup', 'completed',"
            " 'bench', $2, now(), now())",
            [(task_id, {"label": "20261130-000000F"}) for task_id in ids],
        )
        await pool.executemany(
            "INSERT INTO task_steps (task_id, position, name, status, started_at, completed_at)"
            " VALUES ($1, $2, $3, 'completed', now(), now())",
            [
                (task_id, position, name)
                for task_id in ids
                for position, name in enumerate(("write_config", "run_backup", "record_result"))
            ],
        )
    finally:
        await pool.close()


def store_dsn(server: BenchServer) -> str:
    settings = Settings(data_dir=server.data_dir)
    password = (server.data_dir / "store.password").read_text().strip()
    socket = quote(str(settings.run_dir / "store"), safe="")
    return f"postgresql://controlplane:{quote(password, safe='')}@{socket}:5432/postgres"


async def churn(dsn: str, per_second: float, seconds: float) -> int:
    """Touch one instance row and one task row of db-0, `per_second` times a second."""
    if per_second <= 0:
        return 0
    pool = await create_pool(dsn, min_size=1, max_size=1)
    writes = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            await pool.execute(
                "UPDATE instances SET updated_at = now() WHERE id = (SELECT min(id) FROM"
                " instances WHERE database_id = 'db-0')"
            )
            await pool.execute(
                "UPDATE tasks SET result = $1 WHERE task_id = (SELECT task_id FROM tasks"
                " WHERE database_id = 'db-0' ORDER BY task_id DESC LIMIT 1)",
                {"label": f"20261130-{writes:06d}F"},
            )
            writes += 1
            await asyncio.sleep(1 / per_second)
    finally:
        await pool.close()
    return writes


async def throughput(url: str, token: str, path: str, clients: int, seconds: float) -> float:
    """Requests per second `clients` keep-alive connections get from GET `path`.

    A minimal HTTP/1.1 client on raw streams: a general-purpose client costs more CPU per
    request than the server's reads do, and on two cores it would measure itself."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    done = 0
    deadline = time.monotonic() + seconds

    async def one_client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b" ", 2)[1]
                assert status == b"200", (path, head)
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                done += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return done / (time.monotonic() - started)


async def measure(
    server: BenchServer, token: str, path: str, clients: int, seconds: float, writes: float
) -> float:
    rate, _ = await asyncio.gather(
        throughput(server.url, token, path, clients, seconds),
        churn(store_dsn(server), writes, seconds),
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writes", type=float, default=10.0, help="store changes per second")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cp-bench-reads-", dir="/tmp"))
    server = BenchServer(root)
    try:
        server.start(env={"CONTROLPLANE_WORKER_CONCURRENCY": "0"})
        asyncio.run(populate_store(server, args.databases, args.nodes, args.tasks))
        token = str(server.client.headers["Authorization"]).removeprefix("Bearer ")
        task_id = server.client.get("/v1/databases/db-0/tasks").json()["tasks"][0]["task_id"]
        routes = [
            "/health",
            "/v1/databases/db-0",
            "/v1/databases/db-0/tasks",
            f"/v1/databases/db-0/tasks/{task_id}",
            "/v1/tasks?limit=20",
            "/v1/hosts",
            "/v1/databases",
        ]
        print(
            f"{args.databases} databases x {args.nodes} nodes, {args.tasks} tasks on db-0, "
            f"{args.clients} clients, {args.seconds:.0f} s per route, "
            f"{args.writes:g} changes/s"
        )
        print(f"{'route':45} {'req/s':>8} {'/health':>8}")
        baseline = None
        for path in routes:
            rate = asyncio.run(
                measure(server, token, path, args.clients, args.seconds, args.writes)
            )
            baseline = baseline or rate
            print(f"{path:45} {rate:8.0f} {rate / baseline:8.2f}")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
