"""Scheduling latency: 2 000 schedules across 200 databases, all due at the same instant.

Usage: .venv/bin/python -m bench.scheduler [--databases 200] [--nodes 2] [--schedules 5]
                                            [--rounds 3]

Starts a scratch Postgres (as the OS user), migrates a state store into it and inserts the
database rows (spec jsonb) and instance rows directly: no instance runs, the scheduler only
inserts tasks. Every schedule is `* * * * *`, so every tick of a round falls due at the same
minute boundary (the herd a fleet of `0 3 * * *` schedules makes). The scheduler runs its real
loop (`Scheduler.run`, wake-ups included) on a clock shifted so that a boundary comes 2 s after
each round starts, instead of waiting for the wall clock's next minute.

Latency per tick = its task committed (the scheduler's clock right after the claiming
transaction commits) - the tick's due time. Per node and tick one schedule gets the backup
task and the others a `skipped` task naming it: both are inserts and both count. Prints
p50/p99/max (target: p99 < 1 s) and the cost of a pass with nothing due (the per-second load).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

import msgspec

from controlplane.nodes.backups import effective_backup_config
from controlplane.scheduler.loop import Fired, Scheduler, next_run_at
from controlplane.spec.models import DatabaseSpec
from controlplane.spec.secrets import split_secrets
from controlplane.store.migrate import migrate
from controlplane.store.pool import Pool, create_pool
from controlplane.system.clock import SystemClock
from controlplane.workflows.backup_node import NODE_BACKUP
from tests.support.os_user import give_to_os_user
from tests.support.pgcluster import ScratchCluster

LEAD_SECONDS = 2.0


class ShiftedClock(SystemClock):
    """Real time moved by an offset the benchmark sets: seconds pass at the real rate."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return super().now() + self.offset

    def boundary_soon(self) -> datetime:
        """Shift so that the next minute boundary is LEAD_SECONDS away; return it."""
        boundary = next_run_at("* * * * *", self.now() + timedelta(seconds=LEAD_SECONDS))
        self.offset += boundary - timedelta(seconds=LEAD_SECONDS) - self.now()
        return boundary


def spec_of(index: int, nodes: int, schedules: int) -> dict[str, object]:
    config = {
        "repositories": [{"type": "posix", "base_path": f"/srv/backups/{index}"}],
        "schedules": [
            {"id": f"s{i}", "type": ("full", "diff", "incr")[i % 3], "cron_expression": "* * * * *"}
            for i in range(schedules)
        ],
    }
    spec = msgspec.convert(
        {
            "database_name": "app",
            "backup_config": config,
            "nodes": [{"name": f"n{i + 1}"} for i in range(nodes)],
        },
        DatabaseSpec,
    )
    public, _ = split_secrets(spec)
    return public


async def populate(pool: Pool, databases: int, nodes: int, schedules: int) -> None:
    await pool.executemany(
        "INSERT INTO databases (id, state, spec) VALUES ($1, 'available', $2)",
        [(f"db-{d}", spec_of(d, nodes, schedules)) for d in range(databases)],
    )
    await pool.executemany(
        "INSERT INTO instances (id, database_id, node_name, host_id, port, state)"
        " VALUES ($1, $2, $3, 'local', $4, 'available')",
        [
            (f"db-{d}-n{n + 1}", f"db-{d}", f"n{n + 1}", 10000 + d * nodes + n)
            for d in range(databases)
            for n in range(nodes)
        ],
    )


async def wait_for(probe: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    try:
        async with asyncio.timeout(seconds):
            while True:
                if await probe():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def rounds(pool: Pool, total: int, count: int) -> list[float]:
    """Run the loop through `count` boundaries; the latency of every tick, in seconds."""
    clock = ShiftedClock()
    fired: list[Fired] = []
    scheduler = Scheduler(
        pool,
        backup_steps=NODE_BACKUP.step_names,
        config_of=effective_backup_config,
        clock=clock,
        on_fired=fired.append,
    )
    loop = asyncio.create_task(scheduler.run())

    async def recorded() -> bool:
        return await pool.fetchval("SELECT count(*) FROM schedules") == total

    latencies: list[float] = []
    try:
        await wait_for(recorded, 60, "the schedules to be recorded")
        for number in range(1, count + 1):
            boundary = clock.boundary_soon()
            await wait_for(lambda: _done(fired, total), 60, f"round {number}")
            mine = [(f.recorded_at - f.tick_at).total_seconds() for f in fired]
            assert all(f.tick_at == boundary for f in fired), "a tick of another minute fired"
            skipped = sum(f.status == "skipped" for f in fired)
            print(
                f"round {number}: {len(fired)} ticks ({len(fired) - skipped} tasks, {skipped}"
                f" skipped) p50 {percentile(mine, 0.5) * 1000:.0f} ms,"
                f" p99 {percentile(mine, 0.99) * 1000:.0f} ms, max {max(mine) * 1000:.0f} ms",
                flush=True,
            )
            latencies += mine
            fired.clear()
            await pool.execute("DELETE FROM tasks")  # free the nodes (their ticks go too)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    return latencies


async def _done(fired: list[Fired], total: int) -> bool:
    return len(fired) >= total


async def idle_pass(pool: Pool) -> tuple[float, float]:
    """(first pass, steady pass) seconds with nothing due: the first computes every wake-up."""
    scheduler = Scheduler(
        pool, backup_steps=NODE_BACKUP.step_names, config_of=effective_backup_config
    )
    times = []
    for _ in range(6):
        began = time.perf_counter()
        assert await scheduler.run_pass() == []
        times.append(time.perf_counter() - began)
    return times[0], statistics.median(times[1:])


async def bench(args: argparse.Namespace, dsn: str) -> bool:
    total = args.databases * args.nodes * args.schedules
    pool = await create_pool(dsn)
    try:
        await migrate(pool)
        await populate(pool, args.databases, args.nodes, args.schedules)
        print(
            f"{total} schedules: {args.databases} databases x {args.nodes} nodes x"
            f" {args.schedules} schedules, all `* * * * *`",
            flush=True,
        )
        latencies = await rounds(pool, total, args.rounds)
        cold, warm = await idle_pass(pool)
    finally:
        await pool.close()
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    ok = p99 < 1.0
    print(
        f"scheduling latency (due -> task committed) over {len(latencies)} ticks:"
        f" p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
        f"  [target p99 < 1000 ms: {'PASS' if ok else 'FAIL'}]"
    )
    print(f"pass with nothing due: first {cold * 1000:.0f} ms, then {warm * 1000:.1f} ms")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--schedules", type=int, default=5, help="per node")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cpbs-", dir="/tmp"))
    give_to_os_user(root)
    cluster = ScratchCluster(root)
    try:
        cluster.start()
        cluster.psql("CREATE DATABASE bench")
        ok = asyncio.run(bench(args, cluster.dsn("bench")))
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
