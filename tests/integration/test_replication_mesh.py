"""The pglogical mesh library against real PostgreSQL 15 + pglogical 2.4.2 clusters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from controlplane.replication import (
    FENCED_START_SETTINGS,
    MeshChanges,
    MeshNode,
    converge_mesh,
    drop_node_links,
    local_node_name,
    release_stranded_workers,
    reset_restored_node,
    stop_workers,
    subscription_name,
    subscription_status,
)
from tests.support.eventually import eventually
from tests.support.pglogical_nodes import (
    APP_OWNER,
    PG_BIN,
    PglogicalNode,
    clone_node,
    start_nodes,
    stop_nodes,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (PG_BIN / "postgres").exists()
        or not Path("/usr/lib/postgresql/15/lib/pglogical.so").exists(),
        reason="needs PostgreSQL 15 with pglogical",
    ),
]

Conn = asyncpg.Connection  # type: ignore[type-arg]
ITEMS_DDL = "CREATE TABLE items (id int PRIMARY KEY, origin text NOT NULL)"
CHECKSUM_SQL = (
    "SELECT count(*) || ':' || coalesce(md5(string_agg(id || origin, ',' ORDER BY id)), '') "
    "FROM items"
)
SYNC = 30.0  # seconds any replication wait may take before a test fails


@dataclass
class Mesh:
    """Running nodes, a superuser connection to each, and a scratch root for more nodes."""

    root: Path
    nodes: dict[str, PglogicalNode]
    conns: dict[str, Conn] = field(default_factory=dict)

    def mesh_nodes(self, names: Iterable[str] | None = None) -> list[MeshNode]:
        return [self.nodes[n].mesh_node for n in (names or self.nodes)]

    async def add(self, node: PglogicalNode) -> None:
        self.nodes[node.name] = node
        self.conns[node.name] = await node.connect()

    async def as_owner(self, node: str, sql: str, *args: object) -> None:
        """Run one statement as the application's (non-superuser) owner role."""
        conn = await self.nodes[node].connect(APP_OWNER)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    async def everywhere_as_owner(self, sql: str) -> None:
        for name in self.nodes:
            await self.as_owner(name, sql)


@pytest.fixture
async def mesh(scratch_dir: Path) -> AsyncIterator[Mesh]:
    """Three running nodes n1..n3 with an `items` table each, not yet linked."""
    cluster = Mesh(scratch_dir, await start_nodes(scratch_dir, ["n1", "n2", "n3"]))
    try:
        for node in list(cluster.nodes.values()):
            await cluster.add(node)
        await cluster.everywhere_as_owner(ITEMS_DDL)
        yield cluster
    finally:
        await asyncio.gather(*(c.close() for c in cluster.conns.values()))
        stop_nodes(cluster.nodes.values())


async def checksums(conns: dict[str, Conn], sql: str = CHECKSUM_SQL) -> dict[str, str]:
    return {name: str(await conn.fetchval(sql)) for name, conn in conns.items()}


async def until_all_hold(conns: dict[str, Conn], count: int, sql: str = CHECKSUM_SQL) -> str:
    """Wait until every node holds `count` rows and the same checksum; return it."""

    async def probe() -> str:
        sums = await checksums(conns, sql)
        values = set(sums.values())
        assert len(values) == 1 and values.pop().startswith(f"{count}:"), sums
        return sums.popitem()[1]

    return await eventually(probe, timeout=SYNC, what=f"{count} identical rows on every node")


async def slots(conn: Conn) -> list[str]:
    return [
        r["slot_name"]
        for r in await conn.fetch("SELECT slot_name FROM pg_replication_slots ORDER BY 1")
    ]


async def converge(
    cluster: Mesh, new_nodes: Iterable[str] = (), source_node: dict[str, str] | None = None
) -> MeshChanges:
    """converge_mesh over every node of `cluster`."""
    return await converge_mesh(
        cluster.conns,
        cluster.mesh_nodes(),
        new_nodes=set(new_nodes),
        source_node=source_node,
        sync_timeout=SYNC,
    )


async def test_rows_written_on_every_node_reach_all_others(mesh: Mesh) -> None:
    """After converge_mesh a row inserted on any node appears on every other node."""
    await converge(mesh)
    for i, name in enumerate(mesh.nodes, start=1):
        await mesh.as_owner(name, "INSERT INTO items VALUES ($1, $2)", i, name)
    await until_all_hold(mesh.conns, 3)
    assert await mesh.conns["n3"].fetchval("SELECT origin FROM items WHERE id = 1") == "n1"


async def test_every_subscription_reports_replicating(mesh: Mesh) -> None:
    """subscription_status lists, per node, one replicating subscription from each other node."""
    await converge(mesh)
    for name, conn in mesh.conns.items():
        statuses = await subscription_status(conn)
        others = sorted(set(mesh.nodes) - {name})
        assert [(s.provider_node, s.name, s.status) for s in statuses] == [
            (other, subscription_name(other, name), "replicating") for other in others
        ]


async def _stray_worker(mesh: Mesh, node: str, subscription: str, *, origin: bool) -> Conn:
    """A session that is, to every eye but pglogical's, `subscription`'s apply worker: named
    as pglogical names it and, with `origin`, holding its replication origin. pglogical 2.4
    leaves such a worker running when it gives the worker's slot to another one."""
    conn = mesh.conns[node]
    sub_id, slot = await conn.fetchrow(
        "SELECT sub_id, sub_slot_name FROM pglogical.subscription WHERE sub_name = $1",
        subscription,
    )
    dboid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
    stray = await mesh.nodes[node].connect()
    await stray.execute(
        "SELECT set_config('application_name', $1, false)", f"pglogical apply {dboid}:{sub_id}"
    )
    if origin:
        await stray.execute("SELECT pg_replication_origin_session_setup($1)", slot)
    return stray


async def _ended(mesh: Mesh, node: str, stray: Conn) -> None:
    """Wait until the stray's backend is gone, as the node itself says (the client side of a
    terminated session is in no state to be asked), then drop the client side."""
    pid = stray.get_server_pid()

    async def gone() -> bool:
        return bool(
            await mesh.conns[node].fetchval(
                "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", pid
            )
        )

    try:
        await eventually(gone, timeout=10, what=f"backend {pid} to be ended")
    finally:
        stray.terminate()


async def test_an_apply_worker_pglogical_lost_track_of_is_ended(mesh: Mesh) -> None:
    """An apply worker pglogical no longer sees keeps its subscription down (every worker the
    manager starts finds the origin taken): release_stranded_workers ends it and replication
    resumes; stop_workers ends one too, which disabling the subscription does not reach. The
    workers pglogical tracks are never taken for strays."""
    await converge(mesh)
    conn = mesh.conns["n2"]
    assert await release_stranded_workers(conn, older_than=0) == []
    name = subscription_name("n1", "n2")
    await stop_workers(conn, [name])
    stray = await _stray_worker(mesh, "n2", name, origin=True)
    await conn.execute("SELECT pglogical.alter_subscription_enable($1, true)", name)

    async def released() -> list[str]:
        return await release_stranded_workers(conn, older_than=0)

    assert await eventually(released, timeout=SYNC, what="the stray to be found") == [name]
    await _ended(mesh, "n2", stray)
    await mesh.as_owner("n1", "INSERT INTO items VALUES (1, 'n1')")
    await until_all_hold(mesh.conns, 1)

    stray = await _stray_worker(mesh, "n2", name, origin=False)
    await stop_workers(conn, [name], limit=SYNC)
    await _ended(mesh, "n2", stray)


async def test_tables_created_after_the_mesh_replicate(mesh: Mesh) -> None:
    """A table the owner creates on every node after the mesh exists replicates; one without a
    primary key replicates its inserts, and its updates too once it gets a key."""
    await converge(mesh)
    await mesh.everywhere_as_owner("CREATE TABLE later (id int PRIMARY KEY, origin text)")
    await mesh.everywhere_as_owner("CREATE TABLE events (origin text NOT NULL)")
    for name in mesh.nodes:
        await mesh.as_owner(name, "INSERT INTO later VALUES ($1, $2)", int(name[1:]), name)
        await mesh.as_owner(name, "INSERT INTO events VALUES ($1)", name)
    later = "SELECT count(*) || ':' || md5(string_agg(id || origin, ',' ORDER BY id)) FROM later"
    await until_all_hold(mesh.conns, 3, later)
    events = "SELECT count(*) || ':' || md5(string_agg(origin, ',' ORDER BY origin)) FROM events"
    await until_all_hold(mesh.conns, 3, events)
    await mesh.everywhere_as_owner("ALTER TABLE events ADD PRIMARY KEY (origin)")
    await mesh.as_owner("n1", "UPDATE events SET origin = 'n1 updated' WHERE origin = 'n1'")
    updated = await until_all_hold(mesh.conns, 3, events)
    assert updated == await mesh.conns["n1"].fetchval(events)
    assert await mesh.conns["n3"].fetchval("SELECT count(*) FROM events WHERE origin = 'n1'") == 0


async def test_concurrent_writes_on_all_nodes_converge_to_equal_checksums(mesh: Mesh) -> None:
    """Inserts running at the same time on all three nodes end identical everywhere."""
    await converge(mesh)

    async def write(name: str, base: int) -> None:
        conn = await mesh.nodes[name].connect(APP_OWNER)
        try:
            for batch in range(10):
                start = base + batch * 50
                await conn.execute(
                    "INSERT INTO items SELECT g, $2 FROM generate_series($1, $1 + 49) AS g",
                    start,
                    name,
                )
        finally:
            await conn.close()

    await asyncio.gather(*(write(name, i * 10_000) for i, name in enumerate(mesh.nodes)))
    await until_all_hold(mesh.conns, 1500)


async def test_converging_twice_changes_nothing(mesh: Mesh) -> None:
    """A second converge_mesh reports no change and leaves subscriptions and slots as they were."""
    first = await converge(mesh)
    assert first.changed
    before = {n: (await subscription_status(c), await slots(c)) for n, c in mesh.conns.items()}
    second = await converge(mesh)
    assert not second.changed
    after = {n: (await subscription_status(c), await slots(c)) for n, c in mesh.conns.items()}
    assert after == before
    assert all(len(s) == 2 for _, s in after.values())


async def test_new_node_is_populated_from_its_source_and_joins_both_ways(mesh: Mesh) -> None:
    """n4 joining with source n1 gets the schema and every row, then replicates both ways."""
    await mesh.everywhere_as_owner("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
    await mesh.everywhere_as_owner("CREATE TABLE audit (what text)")
    await converge(mesh)
    for i, name in enumerate(mesh.nodes, start=1):
        await mesh.as_owner(
            name,
            "INSERT INTO items SELECT g, $2 FROM generate_series($1, $1 + 99) g",
            i * 1000,
            name,
        )
    await mesh.as_owner("n2", "INSERT INTO notes (id, body) VALUES (7, 'from n2')")
    await mesh.as_owner("n3", "INSERT INTO audit VALUES ('from n3')")
    await until_all_hold(mesh.conns, 300)
    n4 = (await start_nodes(mesh.root, ["n4"]))["n4"]
    await mesh.add(n4)

    changes = await converge(mesh, new_nodes={"n4"}, source_node={"n4": "n1"})

    assert changes.schemas_copied == ("n4",)
    await until_all_hold(mesh.conns, 300)
    n4_conn = mesh.conns["n4"]
    assert await n4_conn.fetchval("SELECT body FROM notes") == "from n2"
    assert await n4_conn.fetchval("SELECT what FROM audit") == "from n3"
    owner = await n4_conn.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'items'")
    assert owner == APP_OWNER
    await mesh.as_owner("n4", "INSERT INTO items VALUES (4000, 'n4')")
    await mesh.as_owner("n2", "INSERT INTO items VALUES (2999, 'n2')")
    await until_all_hold(mesh.conns, 302)
    assert len(await subscription_status(n4_conn)) == 3
    again = await converge(mesh, new_nodes={"n4"}, source_node={"n4": "n1"})
    assert not again.changed
    await until_all_hold(mesh.conns, 302)  # the join did not copy or empty anything again


async def test_drop_node_links_cuts_a_reachable_node_out_of_the_mesh(mesh: Mesh) -> None:
    """After drop_node_links for n2 no subscription or slot refers to it, and n1 and n3 still
    replicate both ways while n2's writes stay on n2."""
    await converge(mesh)
    await drop_node_links(mesh.conns, "n2")
    await assert_cut_out(mesh, "n2")
    assert await subscription_status(mesh.conns["n2"]) == []
    assert await slots(mesh.conns["n2"]) == []


async def test_drop_node_links_drops_slots_left_for_a_node_it_cannot_reach(mesh: Mesh) -> None:
    """Without a connection to n2 (still running and streaming) its slots on n1 and n3 are
    dropped anyway."""
    await converge(mesh)
    reachable = {name: conn for name, conn in mesh.conns.items() if name != "n2"}
    await drop_node_links(reachable, "n2")
    await assert_cut_out(mesh, "n2")


async def assert_cut_out(mesh: Mesh, gone: str) -> None:
    """No subscription or slot on the remaining nodes mentions `gone`; they still replicate."""
    rest = {name: conn for name, conn in mesh.conns.items() if name != gone}
    for conn in rest.values():
        statuses = await subscription_status(conn)
        assert all(gone not in s.name and s.provider_node != gone for s in statuses), statuses
        assert len(statuses) == len(rest) - 1
        assert all(gone not in slot for slot in await slots(conn))
    await mesh.as_owner("n1", "INSERT INTO items VALUES (1, 'n1')")
    await mesh.as_owner("n3", "INSERT INTO items VALUES (3, 'n3')")
    await mesh.as_owner(gone, "INSERT INTO items VALUES (2, 'gone')")
    await until_all_hold(rest, 2)
    assert await mesh.conns[gone].fetchval("SELECT count(*) FROM items") == 1


async def test_node_restored_from_another_nodes_backup_is_reset_without_harming_it(
    mesh: Mesh,
) -> None:
    """A clone of n1 reset as n4 while n1 is down leaves n1's slots alone (n1 then catches up on
    what it missed), and afterwards joins the mesh from n1 and replicates both ways."""
    await converge(mesh)
    fenced = [f"-c {key}={value}" for key, value in FENCED_START_SETTINGS.items()]
    n4 = await asyncio.to_thread(clone_node, mesh.nodes["n1"], mesh.root, "n4", *fenced)
    await mesh.add(n4)
    assert await local_node_name(mesh.conns["n4"]) == "n1"
    # n1 down: its slots on n2 and n3 are idle, so nothing but care keeps them from being dropped.
    await mesh.conns.pop("n1").close()
    await asyncio.to_thread(mesh.nodes["n1"].stop)
    await mesh.as_owner("n2", "INSERT INTO items VALUES (2, 'n2')")
    before = {n: await slots(mesh.conns[n]) for n in ("n2", "n3")}

    assert await reset_restored_node(mesh.conns["n4"], n4.mesh_node)

    assert await local_node_name(mesh.conns["n4"]) == "n4"
    assert await subscription_status(mesh.conns["n4"]) == []
    assert {n: await slots(mesh.conns[n]) for n in ("n2", "n3")} == before
    await asyncio.to_thread(mesh.nodes["n1"].start)
    mesh.conns["n1"] = await mesh.nodes["n1"].connect()
    await until_all_hold({n: c for n, c in mesh.conns.items() if n != "n4"}, 1)
    await mesh.conns["n4"].close()
    await asyncio.to_thread(n4.restart)  # without the fence
    mesh.conns["n4"] = await n4.connect()
    await converge(mesh, new_nodes={"n4"}, source_node={"n4": "n1"})
    await mesh.as_owner("n4", "INSERT INTO items VALUES (4, 'n4')")
    await mesh.as_owner("n3", "INSERT INTO items VALUES (3, 'n3')")
    await until_all_hold(mesh.conns, 3)


async def test_node_joins_by_copy_while_every_member_writes(mesh: Mesh) -> None:
    """n4 joins with a copy of n1 while n1, n2 and n3 each commit a row every few milliseconds
    throughout: the join completes, and every node ends with every committed row exactly once."""
    await converge(mesh)
    n4 = (await start_nodes(mesh.root, ["n4"]))["n4"]
    await mesh.add(n4)
    await mesh.as_owner("n4", ITEMS_DDL)
    committed: dict[str, int] = {}
    stop = asyncio.Event()

    async def writer(name: str, base: int) -> None:
        conn = await mesh.nodes[name].connect(APP_OWNER)
        try:
            while not stop.is_set():
                await conn.execute(
                    "INSERT INTO items VALUES ($1, $2)", base + committed[name], name
                )
                committed[name] += 1
                await asyncio.sleep(0.005)
        finally:
            await conn.close()

    writers = []
    for index, name in enumerate(("n1", "n2", "n3"), start=1):
        committed[name] = 0
        writers.append(asyncio.create_task(writer(name, index * 1_000_000)))
    try:
        await eventually(
            lambda: asyncio.sleep(0, result=all(committed.values()) or None), timeout=SYNC
        )
        changes = await converge(mesh, new_nodes={"n4"}, source_node={"n4": "n1"})
        await asyncio.sleep(0.5)  # writes keep flowing after the join too
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert changes.subscriptions
    await until_all_hold(mesh.conns, sum(committed.values()))
    assert await slots(mesh.conns["n1"]) == sorted(await slots(mesh.conns["n1"]))
    for conn in mesh.conns.values():  # no guard or spare slot is left retaining WAL
        assert not [s for s in await slots(conn) if s.startswith("cp_join_")]
