"""Nodes with replicas (a Patroni cluster per node, etcd started by the control plane):
streaming replicas, and an automatic failover with writers on every node."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.api import create_and_wait, database_body, fresh_view
from tests.support.data import TABLE, on_every
from tests.support.eventually import eventually
from tests.support.ha import (
    by_id,
    failover_log,
    replica_body,
    serving_hosts,
    slots_copied,
    streaming,
)
from tests.support.load import assert_holds, ids_on, settle, writers
from tests.support.processes import postmasters_under
from tests.support.server import ServerProcess


@pytest.fixture
def ha_server(scratch_dir: Path, store_url: str) -> Iterator[ServerProcess]:
    yield from serving_hosts(scratch_dir, store_url)


async def _superuser(server: ServerProcess, instance: dict[str, Any]) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=str(server.run_dir / "i" / instance["host_id"]),
        port=instance["port"],
        user="postgres",
        database="app",
    )


async def _mesh_report(server: ServerProcess, view: dict[str, Any]) -> str:
    """Subscriptions and slots of every primary (for failure messages), as the superuser."""
    report = []
    for node in (i for i in view["instances"] if i["role"] == "primary"):
        try:
            conn = await _superuser(server, node)
        except OSError as exc:
            report.append(f"{node['id']}: {exc}")
            continue
        try:
            subs = await conn.fetch(
                "SELECT subscription_name, status FROM pglogical.show_subscription_status()"
            )
            slots = await conn.fetch(
                "SELECT slot_name, active, confirmed_flush_lsn::text FROM pg_replication_slots"
                " WHERE slot_type = 'logical'"
            )
            lsn = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
        finally:
            await conn.close()
        report.append(
            f"{node} at {lsn}: subs {[tuple(r) for r in subs]} slots {[tuple(r) for r in slots]}"
        )
    return "; ".join(report)


def _lose_host(server: ServerProcess, instance: dict[str, Any]) -> None:
    """SIGKILL the instance's Patroni, then every postmaster of its host."""
    home = server.data_dir / "hosts" / instance["host_id"] / instance["id"]
    os.kill(int((home / "patroni.pid").read_text()), signal.SIGKILL)
    for pid in postmasters_under(server.data_dir / "hosts" / instance["host_id"]):
        os.kill(pid, signal.SIGKILL)


async def test_lost_primary_host_fails_over_and_the_mesh_follows(ha_server: ServerProcess) -> None:
    """n1 is a primary on h1 with a replica on h2; n2 runs on h3. With writers on both nodes,
    n1's primary host is cut off (its Postgres SIGKILLed, its Patroni frozen): the replica is
    promoted within 30 s, the API shows it, rows written after it reach the new primary from
    both nodes at once, and the old primary comes back as a replica of the new one."""
    async with ha_server.client(timeout=60) as api:
        body = replica_body("ha")
        database = await create_and_wait(api, body)
        view = await streaming(api, "ha")
        roles = {i["id"]: (i["node_name"], i["host_id"], i["role"]) for i in view["instances"]}
        assert roles == {
            "ha-n1": ("n1", "h1", "primary"),
            "ha-n1-h2": ("n1", "h2", "replica"),
            "ha-n2": ("n2", "h3", "primary"),
        }
        replica = by_id(view)["ha-n1-h2"]
        assert replica["state"] == "available" and replica["lag_bytes"] >= 0

        await on_every(database, TABLE)
        async with writers(database) as load:
            await load.progress(50)
            await slots_copied(view, "n1")
            await load.progress(25)
            old = by_id(view)["ha-n1"]
            killed_at = time.monotonic()
            # h1 is lost: its Patroni and its Postgres are SIGKILLed. The monitor starts it
            # again only once another member leads (else it would take its lock back).
            _lose_host(ha_server, old)

            async def promoted() -> dict[str, Any] | None:
                now = (await api.get("/v1/databases/ha")).json()
                mine = by_id(now)
                return now if mine["ha-n1-h2"]["role"] == "primary" else None

            await eventually(promoted, timeout=60, interval=0.5, what="the replica promoted")
            assert time.monotonic() - killed_at < 30 + 5  # + the monitor's observation
            promoted_at = time.time()
            await load.progress(50)  # both nodes take writes again, through the new primary
        after = load.committed() & load.sent_after(promoted_at)
        assert after, "no row written after the failover"

        async def flowed() -> bool:
            # Every row written after the failover, on either node, reached both nodes: the
            # mesh follows the new primary both ways (at once, not after pglogical's 180 s).
            for node in ("n1", "n2"):
                missing = after - await ids_on(database, node)
                if missing:
                    raise AssertionError(
                        f"{node} misses {len(missing)}: {sorted(missing)[:5]}; "
                        + await _mesh_report(ha_server, (await api.get("/v1/databases/ha")).json())
                    )
            return True

        await eventually(flowed, timeout=60, what="rows written after the failover everywhere")
        # Asynchronous replicas: the failover may lose what the old primary had committed and
        # not yet streamed (its own last rows, and rows the other nodes had sent it), a few
        # at most (README).
        for node in ("n1", "n2"):
            lost = load.committed(node) - await ids_on(database, "n1")
            assert len(lost) <= 25, (node, sorted(lost))

        # h1 comes back (the monitor starts its Patroni) once the new primary took over: it
        # finds a new leader and follows it.
        async def rejoined() -> dict[str, Any] | None:
            now = await fresh_view(api, "ha")
            mine = by_id(now)
            back, new = mine["ha-n1"], mine["ha-n1-h2"]
            # In recovery again, on the new primary's timeline: rewound, and following it.
            following = back["role"] == "replica" and back["timeline"] == new["timeline"]
            return now if following else None

        await eventually(rejoined, timeout=180, what="the old primary back as a replica")
        # What n2 had received from the old primary and the new one had not is copied to it:
        # every node ends with the same rows.
        await settle(database, timeout=120)

        # Refused on a node with replicas, each with its reason before anything is touched.
        # h2 runs n1's primary now: the spec may not drop it.
        shrunk = database_body("ha", nodes=2)
        shrunk["spec"]["nodes"] = [
            {"name": "n1", "host_ids": ["h1"]},
            {"name": "n2", "host_ids": ["h3"]},
        ]
        refused = await api.post("/v1/databases/ha", json=shrunk)
        assert refused.status_code == 422, refused.text
        error = refused.json()["details"]["errors"][0]
        assert error["path"] == "spec.nodes[0].host_ids" and "primary" in error["message"], error
        repository = {"repositories": [{"type": "posix", "base_path": "/var/tmp/ha-repo"}]}
        for field, value in (("backup_config", repository),):
            changed = {**body, "spec": {**body["spec"], field: value}}
            refused = await api.post("/v1/databases/ha", json=changed)
            assert refused.status_code == 422, refused.text
            error = refused.json()["details"]["errors"][0]
            assert error["path"] == f"spec.{field}" and "replicas" in error["message"], error
        tasks = (await api.get("/v1/databases/ha/tasks")).json()["tasks"]
        assert sorted(t["type"] for t in tasks) == ["create", "failover"], tasks
        log = await failover_log(api, "ha")
        assert "Patroni promoted ha-n1-h2 in place of ha-n1, which it lost" in log, log
        assert "ha-n1-h2 is the primary; the mesh follows it" in log, log


async def test_killed_postmaster_takes_writes_again_within_30_s(ha_server: ServerProcess) -> None:
    """With writers on both nodes, n1's primary postmaster alone is SIGKILLed (its Patroni
    lives): n1 takes writes again within 30 s (Patroni restarts it in place, or fails over),
    and once the writers stop every committed row is on both nodes, with equal digests."""
    async with ha_server.client(timeout=60) as api:
        body = replica_body("pk")
        database = await create_and_wait(api, body)
        view = await streaming(api, "pk")
        await on_every(database, TABLE)
        await slots_copied(view, "n1")
        async with writers(database) as load:
            await load.progress(30)
            (postmaster,) = postmasters_under(ha_server.data_dir / "hosts" / "h1")
            killed_at = time.monotonic()
            os.kill(postmaster, signal.SIGKILL)
            await load.progress(10, "n1", timeout=60)
            assert time.monotonic() - killed_at < 30, time.monotonic() - killed_at
            await load.progress(30)
        await settle(database, timeout=180)
        await assert_holds(database, load.committed())


async def test_rows_the_replica_never_got_reach_the_new_primary(ha_server: ServerProcess) -> None:
    """n1's replica stops receiving WAL (the primary's walsender to it is frozen) while both
    nodes write: n1's rows still reach n2 through the mesh, never the replica. n1's primary
    host is then lost, and the replica is promoted without them. The control plane copies
    them from n2 to the new primary: every row n2 had from n1 is on both nodes, and once the
    writers stop every node holds the same rows and digest."""
    async with ha_server.client(timeout=60) as api:
        database = await create_and_wait(api, replica_body("uw"))
        view = await streaming(api, "uw")
        await on_every(database, TABLE)
        await slots_copied(view, "n1")
        old = by_id(view)["uw-n1"]
        async with writers(database) as load:
            await load.progress(30)

            async def streaming_to_replica() -> int | None:
                conn = await _superuser(ha_server, old)
                try:
                    pid = await conn.fetchval(
                        "SELECT active_pid FROM pg_replication_slots"
                        " WHERE slot_type = 'physical' AND active"
                    )
                finally:
                    await conn.close()
                return None if pid is None else int(pid)

            # (Patroni restarts the replica once to load each slot copy it makes.)
            walsender = await eventually(
                streaming_to_replica, timeout=60, what="a walsender streaming to the replica"
            )
            os.kill(walsender, signal.SIGSTOP)
            cut_at = time.time()
            await load.progress(40, "n1")
            unstreamed = load.committed("n1") - load.committed_before(cut_at)

            async def on_n2() -> bool:
                missing = unstreamed - await ids_on(database, "n2")
                assert not missing, f"n2 misses {len(missing)}"
                return True

            await eventually(on_n2, timeout=30, what="n1's rows on n2")
            # h1 is lost, and the WAL the replica never got with it.
            _lose_host(ha_server, old)
            os.kill(walsender, signal.SIGKILL)

            async def promoted() -> bool:
                now = by_id((await api.get("/v1/databases/uw")).json())
                return now["uw-n1-h2"]["role"] == "primary"

            await eventually(promoted, timeout=60, interval=0.5, what="the replica promoted")
            await load.progress(30)

        async def copied() -> bool:
            missing = unstreamed - await ids_on(database, "n1")
            assert not missing, f"the new primary misses {len(missing)} of n2's rows from n1"
            return True

        await eventually(copied, timeout=60, what="n2's rows from n1 on the new primary")
        states = await settle(database, timeout=120)
        assert states["n1"].count >= len(unstreamed)
        # Every row n2 wrote, and every row of n1 it had received, is on both nodes; only
        # what n1 committed in the instant of its loss, sent to neither, may be gone.
        await assert_holds(database, load.committed("n2") | unstreamed)
        lost = load.committed("n1") - await ids_on(database, "n1")
        assert len(lost) <= 25, sorted(lost)
        log = await failover_log(api, "uw")
        assert "copied to uw-n1-h2: " in log, log
