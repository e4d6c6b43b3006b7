"""An in-place restore of a node with replicas, as pgEdge's eight steps have it: the node's
replicas are torn down before its primary is restored, and rebuilt from the restored primary
once the mesh is linked again.

A replica cannot follow its primary through a restore: the restored primary starts a new
timeline from an earlier point, and what a replica replayed past that point is not on it. So:

1. `check_leader` (when the restore is requested, and again when its task starts): the node's
   Patroni cluster has a running leader, and it is the instance the store calls the primary.
   A node in the middle of a failover is refused; nothing is touched.
2. `tear_down` (after the primary is drained, so no write of its own is lost): every replica
   is stopped and removed with its data (its row stays, desired `stopped`); then the primary's
   Patroni is stopped, which stops its Postgres cleanly (its last WAL is archived), Patroni's
   configuration files are taken out of its data directory, the node's instances go back to
   `pg_ctl` and the cluster's keys in etcd are removed. The restore then runs as for any node.
3. `rebuild` (after the mesh is linked again): the replicas are made again as when the node was
   created: Patroni adopts the restored primary, founding a new cluster, and clones each
   replica from it with `pg_basebackup`, so they stream from the restored data.

Each step is idempotent, so a task resumed after a crash repeats it safely.
"""

from __future__ import annotations

from controlplane.errors import DependencyError, PreconditionError
from controlplane.nodes.cluster import NodeCluster, describe, running_leader
from controlplane.nodes.common import ref_of
from controlplane.nodes.replicas import forget_cluster, has_replicas, make_cluster
from controlplane.spec.models import DatabaseSpec
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import Services, StepContext


async def check_leader(services: Services, row: InstanceRow) -> None:
    """Refuse (409) a restore of a node whose cluster has no running leader, or whose leader
    is not the instance the store records as its primary (a failover not yet followed)."""
    if row.supervisor != "patroni":
        return
    cluster = await NodeCluster.of(services, row.database_id, row.node_name)
    try:
        view = await cluster.view()
    except DependencyError as exc:
        raise PreconditionError(
            f"node {row.node_name} cannot be restored now: {exc.message}; start its instances "
            "and try again",
            details={"node": row.node_name},
        ) from None
    leader = running_leader(view)
    if leader is None or leader.name != row.id:
        now = "no running primary" if leader is None else f"its primary is now {leader.name}"
        raise PreconditionError(
            f"node {row.node_name} cannot be restored now: {now} ({describe(view)}); wait "
            "until its failover settles (the node shows one available primary) and try again",
            details={"node": row.node_name},
        )


async def tear_down(ctx: StepContext, row: InstanceRow) -> bool:
    """Remove the node's replicas and release its primary from Patroni (see the module's
    docstring). True when the node had replicas to rebuild afterwards."""
    services, pool = ctx.services, ctx.services.pool
    replicas = await instances.list_replicas(pool, ctx.database_id, row.node_name)
    if row.supervisor != "patroni" and not replicas:
        return False
    sink = ctx.log.sink("patroni", node=row.node_name)
    for replica in replicas:
        await instances.set_desired_of(pool, replica.id, "stopped", "restoring")
        await ctx.log.info(
            f"node {row.node_name}: removing replica {replica.id} on host {replica.host_id} "
            "(it is rebuilt from the restored primary)",
            node=row.node_name,
        )
        await services.orchestrator.remove_instance(ref_of(replica), on_line=sink)
    # The primary last, so no replica can take over when its Patroni stops.
    await instances.set_desired_of(pool, row.id, "stopped", "restoring")
    await services.orchestrator.stop(ref_of(row), on_line=sink)
    await services.orchestrator.release_from_patroni(ref_of(row))
    await instances.set_supervisor(pool, ctx.database_id, row.node_name, "pg_ctl")
    await forget_cluster(services, ctx.database_id, row.node_name)
    await ctx.log.info(
        f"node {row.node_name}: Patroni released {row.id}; it is restored as a single instance",
        node=row.node_name,
    )
    return True


async def rebuild(ctx: StepContext, spec: DatabaseSpec, node_names: set[str]) -> list[str]:
    """Make the replicas of each of `node_names` again from its restored primary; the nodes
    rebuilt."""
    rebuilt = []
    for node in spec.nodes:
        if node.name not in node_names or not has_replicas(node):
            continue
        replicas = await instances.list_replicas(ctx.services.pool, ctx.database_id, node.name)
        for replica in replicas:
            await instances.set_desired_of(ctx.services.pool, replica.id, "running", "creating")
        await ctx.log.info(
            f"node {node.name}: rebuilding {len(replicas)} replica(s) from the restored primary",
            node=node.name,
        )
        await make_cluster(ctx, spec, node)
        rebuilt.append(node.name)
    return rebuilt
