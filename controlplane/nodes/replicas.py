"""A node with replicas: its instances form one Patroni cluster, with etcd as its DCS.

The node's primary is made, configured and joined to the mesh like any node's; then
`start_replicas`:

1. runs the statements Patroni expects on a cluster it did not create (its replication and
   rewind roles), stops the primary and starts its Patroni, which adopts the data directory
   and leads (a promotion: the timeline moves on by one);
2. makes the node's pglogical slots permanent slots of the cluster, so Patroni keeps them on
   whichever member leads and at the right position (an unknown slot it would drop), and
   takes out the slot of a subscriber that left the mesh (Patroni would make it again);
3. starts a Patroni for each replica, which clones the leader and streams from it;
4. restarts at once the subscriptions other nodes hold to this one: pglogical's manager would
   otherwise retry a worker that failed during the adoption only after 180 s.

Every member of the cluster shares the same credentials (database roles and REST API). They
are kept in each member's Patroni configuration, in its private instance directory, and read
back from there by the next step or task that needs them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import asyncpg
import msgspec

from controlplane import replication
from controlplane.errors import ControlPlaneError, PreconditionError
from controlplane.nodes import backups
from controlplane.nodes.cluster_settings import apply_settings
from controlplane.nodes.common import load_spec, managed_settings, ref_of
from controlplane.nodes.following import restart_own_subscriptions, restart_subscriptions_to
from controlplane.orchestrator.base import InstanceRef
from controlplane.orchestrator.local_patroni import BIN_DIR, CONFIG_FILE
from controlplane.orchestrator.patroni import (
    NAMESPACE,
    Credentials,
    LogicalSlot,
    PatroniClient,
    PatroniMember,
    adoption_statements,
    render_config,
    slots_config,
)
from controlplane.server.etcd import delete_prefix
from controlplane.spec.models import DatabaseSpec, NodeSpec
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import Services, StepContext
from controlplane.tasks.logger import TaskLogger

REPLICATION_ROLE = "cp_replicator"
REWIND_ROLE = "cp_rewind"
REST_USER = "controlplane"
# How long the primary's slots may take to move past a checkpoint (their subscribers confirm),
# how long a replica's copy may stay behind before it is copied again (Patroni advances copies
# once per loop, every 10 s), and how long a replica may take to hold usable copies of all.
_SLOT_MOVE_SECONDS = 120.0
_SLOT_ADVANCE_SECONDS = 25.0
_SLOT_COPY_SECONDS = 180.0
# Each member's own (Patroni places them from its configuration): not in the DCS.
_PLACED = {"listen_addresses", "port", "cluster_name", "unix_socket_directories"}


def has_replicas(node: NodeSpec) -> bool:
    return len(node.host_ids) > 1


def scope_of(database_id: str, node_name: str) -> str:
    """The Patroni cluster of a node (its keys in etcd live under /controlplane/<scope>/)."""
    return f"{database_id}-{node_name}"


async def start_replicas(ctx: StepContext) -> dict[str, Any]:
    """For every node: the replicas of hosts its spec no longer names removed; then, for a node
    with replicas, its Patroni cluster, led by the node's primary, and a streaming replica on
    each of its other hosts (a replica added by an update is cloned then)."""
    _, spec = await load_spec(ctx)
    for node in spec.nodes:
        await _remove_dropped_replicas(ctx, node)
        if has_replicas(node):
            await make_cluster(ctx, spec, node)
    return {}


async def _remove_dropped_replicas(ctx: StepContext, node: NodeSpec) -> None:
    """Stop and delete the node's replicas on hosts its spec no longer names. Its primary's
    host was checked to stay before the update was accepted; Patroni drops the physical slot
    a removed member leaves on the primary by itself."""
    if not node.host_ids:
        return
    pool = ctx.services.pool
    for row in await instances.list_replicas(pool, ctx.database_id, node.name):
        if row.host_id in node.host_ids:
            continue
        await ctx.log.info(
            f"node {node.name}: removing replica {row.id} on host {row.host_id}", node=node.name
        )
        await ctx.services.orchestrator.remove_instance(
            ref_of(row), on_line=ctx.log.sink("patroni", node=node.name)
        )
        await instances.delete_instance_by_id(pool, row.id)


async def make_cluster(ctx: StepContext, spec: DatabaseSpec, node: NodeSpec) -> None:
    services, pool = ctx.services, ctx.services.pool
    primary = await instances.get_instance(pool, ctx.database_id, node.name)
    if primary is None:
        raise PreconditionError(f"node {node.name} has no primary instance")
    replicas = await instances.list_replicas(pool, ctx.database_id, node.name)
    members = [primary, *replicas]
    if services.dcs is None:
        raise PreconditionError("no etcd is configured for Patroni")
    etcd = tuple(await services.dcs.start())
    known = await _known_members(ctx, members)
    creds = _credentials(known)
    rest_ports = await _rest_ports(ctx, members, known)
    sink = ctx.log.sink("patroni", node=node.name)

    # 1. The primary: adopted by its Patroni, which knows the mesh's slots on it from the
    # start (an unknown slot it would drop at once).
    slots, used = await _logical_slots(ctx, primary, spec.database_name)
    leader = await _member(ctx, spec, primary, creds, rest_ports, etcd, founder=True, slots=slots)
    if primary.supervisor != "patroni":
        await ctx.log.info(f"node {node.name}: Patroni takes over {primary.id}", node=node.name)
        conn = await services.orchestrator.connect(ref_of(primary))
        try:
            for statement in adoption_statements(leader):
                await conn.execute(statement)
        finally:
            await conn.close()
        await services.orchestrator.stop(ref_of(primary), on_line=sink)
        await instances.set_supervisor(pool, ctx.database_id, node.name, "patroni")
    await services.orchestrator.start_patroni(
        _supervised(primary), render_config(leader), role="primary"
    )
    ctx.failpoint("make_cluster:leader_started")
    async with PatroniClient.for_member(leader) as client:
        # 2. The mesh's slots on this node, kept by the cluster (again: a cluster adopted
        # earlier knows the slots its founder knew then), and no other: Patroni makes a
        # permanent slot again when it is missing, so the slot of a node that left the mesh
        # would hold this node's WAL forever.
        current = set((await client.dynamic_config()).get("slots") or {})
        if slots or current:
            # Only a slot known unused: one the mesh uses but missing just now stays.
            gone = current - set(slots) - used if used is not None else set()
            dropped = dict.fromkeys(sorted(gone))
            await client.patch_config({"slots": {**dropped, **slots_config(slots)}})
            await ctx.log.info(
                f"node {node.name}: permanent slots {', '.join(sorted(slots)) or 'none'}"
                + (f"; no longer {', '.join(dropped)}" if dropped else ""),
                node=node.name,
            )
        # 3. A replica on each other host, cloned from the leader.
        for row in replicas:
            member = await _member(ctx, spec, row, creds, rest_ports, etcd, founder=False)
            await ctx.log.info(
                f"node {node.name}: replica {row.id} on host {row.host_id}", node=node.name
            )
            await services.orchestrator.start_patroni(
                _supervised(row), render_config(member), role="replica"
            )
            await instances.set_state_of(pool, row.id, "available")
        view = await client.cluster()
    await ctx.log.info(
        f"node {node.name}: " + ", ".join(f"{m.name} {m.role} {m.state}" for m in view.members),
        node=node.name,
    )
    # 4. The subscriptions to and from this node, connected now (their workers failed while
    # Patroni restarted the primary), before the slots' copies are checked: a slot moves only
    # while its subscriber confirms.
    await restart_subscriptions_to(
        services, ctx.database_id, spec.database_name, node.name, ctx.log
    )
    own = await restart_own_subscriptions(services, primary, spec.database_name)
    if own:
        await ctx.log.info(f"node {node.name}: restarted {', '.join(own)}", node=node.name)
    if slots and replicas:
        await usable_slot_copies(services, primary, replicas, sorted(slots), ctx.log)
    # 5. The node's settings as the spec has them now (an update may have changed them): last,
    # since a restart they need may hand the primary role to a replica.
    async with PatroniClient.for_member(leader) as client:
        await apply_settings(ctx, node.name, leader, client, members)


async def forget_cluster(services: Services, database_id: str, node_name: str) -> None:
    """Remove what the node's Patroni cluster kept in etcd (its system identifier above all):
    a node made again under the same name founds a new cluster."""
    if services.dcs is not None:
        prefix = f"{NAMESPACE}{scope_of(database_id, node_name)}/"
        await delete_prefix(await services.dcs.start(), prefix)


async def usable_slot_copies(
    services: Services,
    primary: InstanceRow,
    replicas: list[InstanceRow],
    slots: list[str],
    log: TaskLogger,
) -> None:
    """Wait until every replica holds a copy of each logical slot that it can serve from.

    Patroni copies a slot to a replica as the primary has it at that moment. A slot made
    before the replica was cloned can still point (its restart_lsn) at WAL older than the
    clone, which the replica never had: Patroni then cannot advance the copy, and after a
    failover the subscriber of that slot finds its WAL "already removed". So: a checkpoint on
    the primary, once every slot there has moved past it (its subscriber confirms, at once
    under load), a copy behind that point is dropped on the replica, and Patroni copies it
    again from the slot as it is now. A subscriber that stays down is reported, not waited
    for: its slot cannot move until it is back."""
    conn = await services.orchestrator.connect(ref_of(primary))
    try:
        await conn.execute("CHECKPOINT")
        mark = str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
        moved = await _slots_past(conn, slots, mark, _SLOT_MOVE_SECONDS)
    finally:
        await conn.close()
    stuck = sorted(set(slots) - moved)
    if stuck:
        await log.warning(
            f"node {primary.node_name}: slots {', '.join(stuck)} did not move (their "
            "subscriber is down?): their copies on the replicas may not survive a failover",
            node=primary.node_name,
        )
    for row in replicas:
        await _refresh_copies(services, row, sorted(moved), mark, log)


async def _slots_past(conn: Any, slots: list[str], mark: str, limit: float) -> set[str]:
    """The slots among `slots` whose restart_lsn reached `mark` within `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        rows = await conn.fetch(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY($1::text[])"
            " AND restart_lsn >= $2::text::pg_lsn",
            slots,
            mark,
        )
        moved = {str(r[0]) for r in rows}
        if moved >= set(slots) or time.monotonic() > deadline:
            return moved
        await asyncio.sleep(0.5)


async def _refresh_copies(
    services: Services, row: InstanceRow, slots: list[str], mark: str, log: TaskLogger
) -> None:
    """Until `row` holds a copy of each of `slots` at or past `mark`; a copy still behind it
    after a while is dropped, so Patroni copies it again."""
    deadline = time.monotonic() + _SLOT_COPY_SECONDS
    behind_since: dict[str, float] = {}
    while slots:
        try:
            conn = await services.orchestrator.connect(ref_of(row))
        except (OSError, asyncpg.PostgresError):  # Patroni restarts it to load a copy
            conn = None
        if conn is not None:
            try:
                rows = await conn.fetch(
                    "SELECT slot_name, restart_lsn >= $2::text::pg_lsn AS fresh, active"
                    " FROM pg_replication_slots WHERE slot_name = ANY($1::text[])",
                    slots,
                    mark,
                )
                fresh = {str(r["slot_name"]) for r in rows if r["fresh"]}
                if fresh >= set(slots):
                    return
                now = time.monotonic()
                for r in rows:
                    name = str(r["slot_name"])
                    if r["fresh"] or r["active"]:
                        continue
                    if now - behind_since.setdefault(name, now) > _SLOT_ADVANCE_SECONDS:
                        await log.info(
                            f"node {row.node_name}: {row.id}'s copy of slot {name} is older "
                            "than the WAL it holds; dropping it to be copied again",
                            node=row.node_name,
                        )
                        await conn.execute("SELECT pg_drop_replication_slot($1)", name)
                        behind_since.pop(name)
            except (OSError, asyncpg.PostgresError):
                pass
            finally:
                await conn.close()
        if time.monotonic() > deadline:
            await log.warning(
                f"node {row.node_name}: {row.id} has no usable copy of every slot yet: a "
                "failover to it now would leave some subscriptions down",
                node=row.node_name,
            )
            return
        await asyncio.sleep(1.0)


def _supervised(row: InstanceRow) -> InstanceRef:
    """The instance as a Patroni member (before its row says so, while it is being adopted)."""
    return msgspec.structs.replace(ref_of(row), supervisor="patroni")


async def _known_members(ctx: StepContext, rows: list[InstanceRow]) -> dict[str, dict[str, Any]]:
    """The Patroni configurations already written for these instances, by instance id."""
    known = {}
    for row in rows:
        text = await ctx.services.orchestrator.read_file(ref_of(row), CONFIG_FILE)
        if text:
            known[row.id] = json.loads(text)
    return known


def _credentials(known: dict[str, dict[str, Any]]) -> dict[str, Credentials]:
    """The cluster's shared credentials: those of a member already configured, else new."""
    for config in known.values():
        auth = config["postgresql"]["authentication"]
        return {
            "superuser": Credentials(**auth["superuser"]),
            "replication": Credentials(**auth["replication"]),
            "rewind": Credentials(**auth["rewind"]),
            "rest": Credentials(**config["restapi"]["authentication"]),
        }
    return {
        "superuser": Credentials(username="postgres", password=secrets.token_urlsafe(24)),
        "replication": Credentials(username=REPLICATION_ROLE, password=secrets.token_urlsafe(24)),
        "rewind": Credentials(username=REWIND_ROLE, password=secrets.token_urlsafe(24)),
        "rest": Credentials(username=REST_USER, password=secrets.token_urlsafe(24)),
    }


async def _rest_ports(
    ctx: StepContext, rows: list[InstanceRow], known: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """Each member's REST API port on its host: kept once chosen."""
    orchestrator = ctx.services.orchestrator
    ports: dict[str, int] = {}
    for row in rows:
        if row.id in known:
            ports[row.id] = int(known[row.id]["restapi"]["listen"].rsplit(":", 1)[1])
    for row in rows:
        if row.id not in ports:
            used = await instances.used_ports(ctx.services.pool, row.host_id)
            ports[row.id] = orchestrator.pick_port(row.host_id, used | set(ports.values()))
    return ports


async def _member(
    ctx: StepContext,
    spec: DatabaseSpec,
    row: InstanceRow,
    creds: dict[str, Credentials],
    rest_ports: dict[str, int],
    etcd: tuple[str, ...],
    *,
    founder: bool,
    slots: dict[str, LogicalSlot] | None = None,
) -> PatroniMember:
    """The Patroni configuration of one instance: its own pgBackRest setup (written into its
    directory, so after a failover it archives to the node's stanza from its own data
    directory), the node's managed settings cluster-wide, its own archive_command."""
    services = ctx.services
    orchestrator = services.orchestrator
    ref = ref_of(row)
    setup = await backups.backup_setup(services, spec, row, ref)
    await backups.write_backup_files(services, setup)
    settings = await managed_settings(ctx, spec, ref, archive_command=setup.archive_command)
    # Every member runs on the node's settings: they go to the DCS, so a clone starts with them.
    parameters: dict[str, str | int | float | bool] = {
        name: _unquoted(quoted)
        for name, quoted in settings.items()
        if name not in _PLACED and name != "archive_command"
    }
    node = next(n for n in spec.nodes if n.name == row.node_name)
    if node.synchronous_mode:
        # pglogical confirms what it applied only once committed: with synchronous commits,
        # once a replica has it too, so a failover cannot drop rows other nodes sent.
        parameters["pglogical.synchronous_commit"] = "on"
    address, port = orchestrator.connection_info(ref)
    home = orchestrator.file_path(ref, "")
    return PatroniMember(
        scope=scope_of(row.database_id, row.node_name),
        name=row.id,
        rest_host=address,
        rest_port=rest_ports[row.id],
        rest_auth=creds["rest"],
        etcd_hosts=etcd,
        pg_host=address,
        pg_port=port,
        data_dir=orchestrator.data_dir(ref),
        bin_dir=f"{home.rstrip('/')}/{BIN_DIR}",
        socket_dir=orchestrator.socket_dir(ref),
        pgpass=orchestrator.file_path(ref, "pgpass"),
        superuser=creds["superuser"],
        replication=creds["replication"],
        rewind=creds["rewind"],
        parameters=parameters,
        archive_command=setup.archive_command,
        synchronous_mode=node.synchronous_mode,
        slots=slots or {},
        initializes_cluster=founder,
    )


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    return value


async def _logical_slots(
    ctx: StepContext, primary: InstanceRow, database: str
) -> tuple[dict[str, LogicalSlot], set[str] | None]:
    """The logical slots of the node's database on its primary that the cluster must keep:
    all, except a pglogical slot no subscription of another node streams from (its subscriber
    left the mesh; it may be on the primary again only because it was permanent); and the
    names of the slots the other nodes stream from (None when one of them cannot tell)."""
    conn = await ctx.services.orchestrator.connect(ref_of(primary))
    try:
        rows = await conn.fetch(
            "SELECT slot_name, database, plugin FROM pg_replication_slots"
            " WHERE slot_type = 'logical' AND database = $1",
            database,
        )
    finally:
        await conn.close()
    slots = {
        str(r["slot_name"]): LogicalSlot(database=str(r["database"]), plugin=str(r["plugin"]))
        for r in rows
    }
    used = await _slots_streamed_from(ctx, primary.node_name, database)
    if used is None:
        return slots, None
    kept = {
        name: slot
        for name, slot in slots.items()
        if slot.plugin != replication.PLUGIN or name in used
    }
    return kept, used


async def _slots_streamed_from(ctx: StepContext, node_name: str, database: str) -> set[str] | None:
    """The slots on `node_name` that the subscriptions of the other nodes' primaries stream
    from; None when one of those primaries cannot tell (it is down): then none is known
    unused."""
    used: set[str] = set()
    for row in await instances.list_instances(ctx.services.pool, ctx.database_id):
        if row.node_name == node_name:
            continue
        try:
            conn = await ctx.services.orchestrator.connect(ref_of(row), database)
        except (OSError, asyncpg.PostgresError, ControlPlaneError) as exc:
            await ctx.log.info(
                f"node {node_name}: keeping every slot permanent, as {row.id} cannot tell "
                f"which it streams from ({exc})",
                node=node_name,
            )
            return None
        try:
            if not await replication.is_pglogical_node(conn):
                continue  # not in the mesh yet: no subscription
            statuses = await replication.subscription_status(conn)
        finally:
            await conn.close()
        used |= {s.slot_name for s in statuses if s.provider_node == node_name}
    return used
