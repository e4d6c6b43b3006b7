"""A node with a replica as one real Patroni cluster (etcd, Patroni 3, PostgreSQL 15): adoption
of a data directory the control plane made, the REST client, switchover, failover and slots."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from controlplane.errors import DependencyError, PreconditionError
from controlplane.orchestrator.patroni import (
    Credentials,
    LogicalSlot,
    PatroniClient,
    slots_config,
)
from tests.support.eventually import eventually
from tests.support.patroni import HBA, PatroniHarness

pytestmark = pytest.mark.slow

# Written before Patroni first starts: proves the cluster was adopted, not created anew.
ADOPTED_ROWS = "CREATE TABLE adopted (id int PRIMARY KEY); INSERT INTO adopted VALUES (1), (2), (3)"


@pytest.fixture
async def cluster(scratch_dir: Path) -> AsyncIterator[PatroniHarness]:
    """n1a adopts a data directory made by initdb; n1b is cloned from it by pg_basebackup."""
    harness = PatroniHarness(scratch_dir)
    try:
        harness.etcd.start()
        first = harness.add_member("n1a", initializes_cluster=True)
        second = harness.add_member("n1b")
        harness.create_data_dir("n1a", extra_conf="work_mem = '7MB'\n", setup_sql=ADOPTED_ROWS)
        started = time.monotonic()
        first.start()
        assert await harness.wait_for_leader() == "n1a"
        print(f"bootstrap: n1a leader after {time.monotonic() - started:.1f}s")
        started = time.monotonic()
        second.start()
        await harness.wait_for_streaming("n1b")
        print(f"bootstrap: n1b streaming after {time.monotonic() - started:.1f}s")
        yield harness
    finally:
        harness.close()
        print(harness.logs())


async def insert_rows(harness: PatroniHarness, name: str, first: int, count: int) -> None:
    """Commit rows `first`.. `first + count - 1` of table t on member `name`."""
    conn = await harness.connect(name)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, payload text)")
        await conn.execute(
            "INSERT INTO t SELECT i, md5(i::text) FROM generate_series($1::int, $2::int) i",
            first,
            first + count - 1,
        )
    finally:
        await conn.close()


async def row_ids(harness: PatroniHarness, name: str) -> set[int]:
    """The ids in table t on member `name`."""
    conn = await harness.connect(name)
    try:
        return {r["id"] for r in await conn.fetch("SELECT id FROM t")}
    finally:
        await conn.close()


async def test_bootstrap_adopts_the_data_dir_and_clones_a_streaming_replica(
    cluster: PatroniHarness,
) -> None:
    """The member that adopts the control plane's data directory leads with its rows, files and
    settings; GET /cluster shows the other, cloned from it, as a streaming replica."""
    async with cluster.client("n1b") as client:
        view = await client.cluster()
        assert await client.is_replica()
        assert not await client.is_primary()
        assert await client.health()
    assert view.leader is not None and view.leader.name == "n1a"
    assert [m.name for m in view.replicas] == ["n1b"]
    replica = view.replicas[0]
    assert replica.role == "replica" and replica.state in ("running", "streaming")
    assert isinstance(replica.lag, int) and replica.lag >= 0
    assert replica.port == cluster.members["n1b"].member.pg_port
    # Adoption starts the directory as a standby and promotes it: the next timeline.
    assert view.leader.timeline == replica.timeline == 2
    assert await cluster.query("n1a", "SELECT state FROM pg_stat_replication") == "streaming"
    system_ids = set()
    for name in ("n1a", "n1b"):
        member = cluster.members[name]
        system_ids.add(
            await cluster.query(name, "SELECT system_identifier FROM pg_control_system()")
        )
        assert await cluster.query(name, "SELECT count(*) FROM adopted") == 3
        # Patroni's postgresql.conf includes the original one (renamed), and so ours.
        assert await cluster.query(name, "SHOW work_mem") == "7MB"
        assert (member.data_dir / "postgresql.base.conf").exists()
        assert (member.data_dir / "pg_hba.conf").read_text() == HBA
        archive = await cluster.query(
            name, "SELECT setting FROM pg_file_settings WHERE name = 'archive_command' AND applied"
        )
        assert archive == f"true {member.data_dir}/%p"
    assert len(system_ids) == 1


async def test_no_member_runs_initdb_and_clones_wait_for_the_founder(scratch_dir: Path) -> None:
    """A member with an empty directory waits for a leader; the founder with none exits instead
    of running initdb, and once its directory exists it leads and the other clones it."""
    harness = PatroniHarness(scratch_dir)
    try:
        harness.etcd.start()
        founder = harness.add_member("n1a", initializes_cluster=True)
        harness.add_member("n1b").start()

        async def waiting() -> bool:
            async with harness.client("n1b") as client:
                with contextlib.suppress(DependencyError):
                    view = await client.cluster()
                    return [(m.name, m.state) for m in view.members] == [("n1b", "stopped")]
            return False

        await eventually(waiting, timeout=30, what="n1b registered, waiting for a leader")
        founder.start()
        assert founder.process is not None
        assert await asyncio.to_thread(founder.process.wait, 60) != 0
        for member in harness.members.values():
            assert not (member.data_dir / "PG_VERSION").exists()
        harness.create_data_dir("n1a")
        founder.start()
        assert await harness.wait_for_leader(among=["n1a"]) == "n1a"
        await harness.wait_for_streaming("n1b")
    finally:
        harness.close()
        print(harness.logs())


async def test_rows_written_on_the_leader_reach_the_replica(cluster: PatroniHarness) -> None:
    """Rows committed on the leader are replayed on the replica, every one of them."""
    await insert_rows(cluster, "n1a", 1, 1000)

    async def replicated() -> bool:
        return await cluster.try_query("n1b", "SELECT count(*) FROM t") == 1000

    await eventually(replicated, timeout=30, what="1000 rows on n1b")
    assert await row_ids(cluster, "n1b") == set(range(1, 1001))


async def test_member_configuration_changes_apply_on_reload_and_restart(
    cluster: PatroniHarness,
) -> None:
    """A member's re-rendered file applies on POST /reload (archive_command) or, for a
    postmaster setting, on POST /restart of that member only; writes need the REST password."""
    second = cluster.members["n1b"]
    second.reconfigure(
        archive_command="true changed %p", local_parameters={"max_files_per_process": 900}
    )
    async with cluster.client("n1b") as client:
        await client.reload()

        async def reloaded() -> bool:
            view = await client.cluster()
            return bool(view.replicas and view.replicas[0].pending_restart)

        await eventually(reloaded, timeout=30, what="n1b reloaded, restart pending")
        assert await cluster.query("n1b", "SHOW max_files_per_process") == "1000"
        assert await client.restart(pending_only=True)
        assert not await client.restart(pending_only=True)
    await cluster.wait_for_streaming("n1b")
    assert await cluster.query("n1b", "SHOW max_files_per_process") == "900"
    archive = "SELECT setting FROM pg_file_settings WHERE name = 'archive_command' AND applied"
    assert await cluster.query("n1b", archive) == "true changed %p"
    assert await cluster.query("n1a", archive) != "true changed %p"
    stranger = PatroniClient(
        second.member.rest_url, Credentials(username="patroni", password="wrong"), member="n1b"
    )
    async with stranger:
        assert (await stranger.cluster()).leader is not None  # reads need no password
        with pytest.raises(DependencyError, match="HTTP 401"):
            await stranger.reload()


async def test_switchover_moves_the_leader_without_losing_a_commit(
    cluster: PatroniHarness,
) -> None:
    """POST /switchover makes the candidate leader; every commit acknowledged on the old leader
    while it was one is on the new leader, and the old one rejoins as a replica."""
    async with cluster.client("n1a") as client:
        with pytest.raises(PreconditionError, match="leader name does not match"):
            await client.switchover(leader="n1b", candidate="n1a")
        later = datetime.now(UTC) + timedelta(hours=1)
        assert "scheduled" in await client.switchover("n1a", "n1b", scheduled_at=later)
        planned = (await client.cluster()).scheduled_switchover
        assert planned is not None and (planned.from_, planned.to) == ("n1a", "n1b")
        assert planned.at == later
        await client.cancel_switchover()
        assert (await client.cluster()).scheduled_switchover is None
    await insert_rows(cluster, "n1a", 1, 500)
    acknowledged: list[int] = []
    writer = asyncio.create_task(write_until_refused(cluster, "n1a", 501, acknowledged))

    async def writing() -> bool:
        return len(acknowledged) > 20

    await eventually(writing, timeout=10, what="writes on n1a")
    started = time.monotonic()
    async with cluster.client("n1a") as client:
        answer = await client.switchover(leader="n1a", candidate="n1b")
    assert "n1b" in answer
    assert await cluster.wait_for_leader(among=["n1a", "n1b"]) == "n1b"
    print(f"switchover: n1b writable after {time.monotonic() - started:.1f}s")
    await asyncio.wait_for(writer, timeout=30)
    on_new_leader = await row_ids(cluster, "n1b")
    assert set(range(1, 501)) <= on_new_leader
    assert set(acknowledged) <= on_new_leader
    await cluster.wait_for_streaming("n1a")
    async with cluster.client("n1a") as client:
        view = await client.cluster()
    assert view.leader is not None and view.leader.name == "n1b"
    assert view.leader.timeline == 3


async def test_failover_promotes_the_replica_when_the_leader_is_killed(
    cluster: PatroniHarness,
) -> None:
    """After SIGKILL of the leader's Patroni and postmaster, POST /failover to the replica
    makes it a writable leader within 30 s; the killed member rejoins as its replica."""
    await insert_rows(cluster, "n1a", 1, 200)

    async def replayed() -> bool:
        return bool(await cluster.try_query("n1b", "SELECT count(*) = 200 FROM t"))

    await eventually(replayed, timeout=30, what="200 rows on n1b")
    cluster.members["n1a"].kill()
    started = time.monotonic()
    async with cluster.client("n1b") as client:
        # Patroni waits for the dead leader's key to expire (ttl) and polls the result for
        # 20 s: the answer may come before the promotion is seen.
        with contextlib.suppress(DependencyError):
            await client.failover("n1b")
    assert await cluster.wait_for_leader(among=["n1b"], timeout=30) == "n1b"
    elapsed = time.monotonic() - started
    print(f"failover: n1b writable {elapsed:.1f}s after the kill")
    assert elapsed < 30
    assert await row_ids(cluster, "n1b") == set(range(1, 201))
    await insert_rows(cluster, "n1b", 201, 100)
    cluster.members["n1a"].start()
    await cluster.wait_for_streaming("n1a", timeout=90)
    print(f"failover: n1a back as a replica {time.monotonic() - started:.1f}s after the kill")

    async def caught_up() -> bool:
        return await cluster.try_query("n1a", "SELECT count(*) FROM t") == 300

    await eventually(caught_up, timeout=30, what="n1a caught up")


async def test_permanent_logical_slot_follows_the_leader(cluster: PatroniHarness) -> None:
    """A logical slot made permanent with PATCH /config is on the new leader after a
    switchover, at its old position: the changes it had not yet given are still there."""
    await cluster.query("n1a", "CREATE TABLE t (id int PRIMARY KEY, payload text)")
    # Made permanent first: Patroni drops an inactive slot it does not know, and a slot made
    # just before the configuration reached Patroni was dropped and made again after the rows.
    async with cluster.client("n1a") as client:
        stored = await client.patch_config(
            {
                "slots": slots_config(
                    {"app_slot": LogicalSlot(database="postgres", plugin="test_decoding")}
                )
            }
        )
    assert stored["slots"]["app_slot"]["type"] == "logical"
    sql = "SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name = 'app_slot'"

    async def made() -> bool:
        return bool(await cluster.try_query("n1a", sql))

    await eventually(made, timeout=60, what="app_slot made on the leader n1a")
    await insert_rows(cluster, "n1a", 1, 50)

    async def copied() -> bool:
        return bool(await cluster.try_query("n1b", sql))

    # Patroni copies the slot to the replica and restarts the replica's Postgres to load it.
    await eventually(copied, timeout=60, what="app_slot copied to n1b")

    async def safe() -> bool:
        # Until then Patroni may drop the copy on promotion and make the slot anew, at the
        # end of WAL (its changes gone): it says so once the copy has caught up.
        return "Logical slot app_slot is safe to be used after a failover" in (
            cluster.members["n1b"].log_path.read_text(errors="replace")
        )

    await eventually(safe, timeout=90, interval=1, what="n1b's copy of app_slot usable")
    await cluster.wait_for_streaming("n1b")
    async with cluster.client("n1a") as client:
        await client.switchover(leader="n1a", candidate="n1b")
    assert await cluster.wait_for_leader(among=["n1a", "n1b"]) == "n1b"
    changes = await cluster.query(
        "n1b",
        "SELECT count(*) FROM pg_logical_slot_get_changes('app_slot', NULL, NULL) "
        "WHERE data LIKE 'table public.t: INSERT:%'",
    )
    assert changes == 50


async def write_until_refused(
    harness: PatroniHarness, name: str, first: int, acknowledged: list[int]
) -> None:
    """Insert one row per transaction on `name` until it stops taking writes; record each id
    whose commit was acknowledged."""
    try:
        conn = await harness.connect(name)
    except (OSError, asyncpg.PostgresError):
        return
    try:
        for row_id in range(first, first + 100_000):
            await conn.execute("INSERT INTO t VALUES ($1, 'w')", row_id)
            acknowledged.append(row_id)
    except Exception:
        return
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=2)
