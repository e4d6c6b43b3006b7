"""The mesh following a node's primary when it moves or restarts: the subscriptions other nodes
hold to it, and its own, restarted at once (pglogical alone retries a failed worker only after
180 s), and after a failover started again from the new primary's slot positions."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from controlplane import replication
from controlplane.errors import DependencyError
from controlplane.nodes.common import ref_of
from controlplane.replication import unstreamed
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import Services
from controlplane.tasks.logger import TaskLogger

_log = logging.getLogger(__name__)


async def restart_subscriptions_to(
    services: Services,
    database_id: str,
    database_name: str,
    node_name: str,
    log: TaskLogger | None = None,
) -> None:
    """Restart, on every other node's primary, its subscriptions to `node_name`."""
    for row in await instances.list_instances(services.pool, database_id):
        if row.node_name == node_name or not _running(row):
            continue
        conn = await services.orchestrator.connect(ref_of(row), database_name)
        try:
            restarted = await replication.restart_subscriptions_from(conn, node_name)
        finally:
            await conn.close()
        if restarted and log is not None:
            await log.info(
                f"node {row.node_name}: restarted {', '.join(restarted)}", node=row.node_name
            )


async def follow_failover(
    services: Services, row: InstanceRow, database_name: str, log: TaskLogger | None = None
) -> None:
    """After `row` was promoted in place of its node's primary: the rows other nodes had from
    the old primary and the new one lacks are copied to it (`replication.unstreamed`), the
    other nodes' subscriptions to the node restart from the new primary's slot positions, and
    the new primary's own subscriptions restart at once (pglogical alone would wait 180 s for
    both)."""
    conn = await services.orchestrator.connect(ref_of(row), database_name)
    try:
        positions = {
            str(r["slot_name"]): str(r["confirmed_flush_lsn"])
            for r in await conn.fetch(
                "SELECT slot_name, confirmed_flush_lsn::text FROM pg_replication_slots"
                " WHERE slot_type = 'logical' AND confirmed_flush_lsn IS NOT NULL"
            )
        }
        point = await unstreamed.switch_point(conn)
        own = [s.name for s in await replication.list_subscriptions(conn)]
        # Stopped while the rows are compared: their origins must not move meanwhile.
        await replication.stop_workers(conn, own)
        try:
            for other in await instances.list_instances(services.pool, row.database_id):
                if other.node_name == row.node_name or not _running(other):
                    continue
                peer = await services.orchestrator.connect(ref_of(other), database_name)
                try:
                    theirs = await replication.list_subscriptions(peer)
                    await replication.stop_workers(
                        peer, [s.name for s in theirs if s.provider == row.node_name]
                    )
                    copied = await unstreamed.recover(
                        conn, peer, row.node_name, other.node_name, point
                    )
                    await _report_copied(copied, row, other, log)
                    await replication.follow_new_primary(peer, row.node_name, positions)
                finally:
                    await peer.close()
        finally:
            await replication.restart_subscriptions_from(conn, None)
    finally:
        await conn.close()


async def _report_copied(
    copied: unstreamed.Copied, row: InstanceRow, peer: InstanceRow, log: TaskLogger | None
) -> None:
    """Say what the failover would have lost but for the copy (the task log, or the server's
    log for the monitor's failovers)."""
    if not copied.rows and not copied.failed:
        return
    line = (
        f"node {row.node_name}: rows {peer.node_name} holds and the old primary had not "
        f"streamed to its replica; copied to {row.id}: {unstreamed.describe(copied)}"
    )
    if log is not None:
        await (log.warning if copied.failed else log.info)(line, node=row.node_name)
    else:
        _log.warning("%s", line)


async def restart_own_subscriptions(
    services: Services, row: InstanceRow, database_name: str
) -> list[str]:
    """Restart every subscription of an instance just promoted (its workers failed while it
    was read-only, and pglogical would retry them only after 180 s)."""
    conn = await services.orchestrator.connect(ref_of(row), database_name)
    try:
        return await replication.restart_subscriptions_from(conn, None)
    finally:
        await conn.close()


async def follow_new_primary(
    services: Services,
    database_id: str,
    database_name: str,
    row: InstanceRow,
    *,
    lossy: bool,
    log: TaskLogger | None = None,
) -> list[str]:
    """The mesh follows `row`, just made its node's primary, and the store records it.

    After a clean handover (switchover) the new primary holds every row the old one had, so
    subscriptions only restart at once (pglogical alone would retry after 180 s). After a
    failover (`lossy`) it may lack what the old one had not streamed: the other nodes'
    subscriptions restart from the new primary's slot positions (`follow_failover`).
    Returns what was restarted, for the task log."""
    await _wait_writable(services, row)
    restarted: list[str] = []
    if lossy:
        await follow_failover(services, row, database_name, log)
    else:
        restarted += await restart_own_subscriptions(services, row, database_name)
        await restart_subscriptions_to(services, database_id, database_name, row.node_name)
    async with services.pool.acquire() as conn:
        await instances.set_primary(conn, database_id, row.node_name, row.id)
    return restarted


async def _wait_writable(services: Services, row: InstanceRow, limit: float = 60.0) -> None:
    """Until `row` is out of recovery: Patroni names a leader from its promote request on,
    and the promotion itself may take a moment longer."""
    deadline = time.monotonic() + limit
    while True:
        try:
            conn = await services.orchestrator.connect(ref_of(row))
            try:
                if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                    return
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError):
            pass
        if time.monotonic() > deadline:
            raise DependencyError(f"instance {row.id} is still in recovery after {limit:g}s")
        await asyncio.sleep(0.2)


def _running(row: InstanceRow) -> bool:
    """Whether the instance should be up now, to act on its subscriptions. A node still being
    created counts: its subscriptions to a node that Patroni just adopted failed during the
    adoption, and pglogical would retry them only after 180 s."""
    return row.desired == "running" and row.state in ("creating", "available", "backing_up")
