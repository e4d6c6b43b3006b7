"""A node cluster's settings: put in the DCS, written and reloaded by Patroni on every member;
those that need a restart are applied replicas first, then the primary hands over to a replica
and restarts as one, so the node keeps taking writes but for the handover."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from controlplane.errors import DependencyError, PreconditionError
from controlplane.nodes.cluster import NodeCluster, pick_candidate, running_leader
from controlplane.nodes.common import load_spec, ref_of
from controlplane.nodes.following import follow_new_primary, restart_subscriptions_to
from controlplane.orchestrator.patroni import (
    ClusterMember,
    ClusterView,
    PatroniClient,
    PatroniMember,
    cluster_parameters,
)
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import StepContext

# How long Patroni may take to write and reload new settings on a member.
_SETTINGS_SECONDS = 60.0
# How long a replica may take to stream again before the primary restarts in place instead.
_CANDIDATE_SECONDS = 60.0


async def apply_settings(
    ctx: StepContext,
    node: str,
    leader: PatroniMember,
    client: PatroniClient,
    members: list[InstanceRow],
) -> None:
    """Put the node's settings in the DCS; Patroni writes them on every member and reloads.
    Those that need a restart are applied replicas first, then the primary hands over to a
    replica and restarts as one, so the node keeps taking writes but for the handover."""
    wanted = cluster_parameters(leader)
    current = (await client.dynamic_config()).get("postgresql", {}).get("parameters", {})
    patch: dict[str, Any] = {k: v for k, v in wanted.items() if current.get(k) != v}
    patch |= {k: None for k in current if k not in wanted}
    if not patch:
        return
    await client.patch_config({"postgresql": {"parameters": patch}})
    await ctx.log.info(
        f"node {node}: settings {', '.join(sorted(patch))} through Patroni", node=node
    )
    changed = {k: str(v) for k, v in patch.items() if v is not None}
    pending = {row.id for row in members if await _settings_read(ctx, row, changed)}
    if not pending:
        return
    cluster = NodeCluster(
        ctx.services,
        node,
        await instances.list_node_instances(ctx.services.pool, ctx.database_id, node),
    )
    for member in (await cluster.view()).replicas:
        if member.name in pending:
            await _restart_member(ctx, cluster, member.name, node)
    leader_now = running_leader(await cluster.view())
    if leader_now is None or leader_now.name not in pending:
        return

    def healthy(v: ClusterView) -> ClusterMember | None:
        try:
            return pick_candidate(v, None, node)
        except PreconditionError:
            return None

    try:  # a replica just restarted streams again within seconds
        candidate = await cluster.wait_for(healthy, "a healthy replica", _CANDIDATE_SECONDS)
    except DependencyError:
        await ctx.log.warning(
            f"node {node}: no healthy replica to hand over to; restarting its primary in place",
            node=node,
        )
        await _restart_member(ctx, cluster, leader_now.name, node)
        await _reconnect_after_restart(ctx, node)
        return
    await ctx.log.info(
        f"node {node}: switching over to {candidate.name} to restart {leader_now.name}", node=node
    )
    await cluster.hand_over(leader_now.name, candidate.name)

    def new_leader(v: ClusterView) -> ClusterMember | None:
        found = running_leader(v)
        return found if found is not None and found.name != leader_now.name else None

    promoted = await cluster.wait_for(new_leader, "the new primary", 180.0)
    promoted_row = cluster.row(promoted.name)
    if promoted_row is not None:
        _, spec = await load_spec(ctx)
        await follow_new_primary(
            ctx.services, ctx.database_id, spec.database_name, promoted_row, lossy=False
        )

    def demoted(v: ClusterView) -> ClusterMember | None:
        return next(
            (
                m
                for m in v.replicas
                if m.name == leader_now.name and m.state in ("running", "streaming")
            ),
            None,
        )

    # Its demotion restarted it as a replica, on the new settings: a restart now only if some
    # setting still waits for one.
    await cluster.wait_for(demoted, f"{leader_now.name} back as a replica", 180.0)
    await _restart_member(ctx, cluster, leader_now.name, node)


async def _settings_read(ctx: StepContext, row: InstanceRow, changed: dict[str, str]) -> bool:
    """Until `row`'s Postgres has read `changed` from the file Patroni writes (its loop runs
    every few seconds); True when one of them waits for a restart."""
    deadline = time.monotonic() + _SETTINGS_SECONDS
    while True:
        try:
            conn = await ctx.services.orchestrator.connect(ref_of(row))
            try:
                rows = await conn.fetch(
                    "SELECT DISTINCT ON (name) name, setting FROM pg_file_settings"
                    " WHERE name = ANY($1::text[]) ORDER BY name, seqno DESC",
                    list(changed),
                )
                if {str(r["name"]): str(r["setting"]) for r in rows} == changed:
                    return bool(
                        await conn.fetchval(
                            "SELECT count(*) FROM pg_settings WHERE pending_restart"
                        )
                    )
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError):
            pass
        if time.monotonic() > deadline:
            raise DependencyError(
                f"instance {row.id} did not take the new settings within {_SETTINGS_SECONDS:.0f} s"
            )
        await asyncio.sleep(1.0)


async def _restart_member(ctx: StepContext, cluster: NodeCluster, name: str, node: str) -> None:
    row = cluster.row(name)
    if row is None:
        return
    async with await cluster.client(row) as member:
        if await member.restart(pending_only=True, timeout_seconds=600):
            await ctx.log.info(f"node {node}: restarted {name} for its new settings", node=node)


async def _reconnect_after_restart(ctx: StepContext, node: str) -> None:
    _, spec = await load_spec(ctx)
    await restart_subscriptions_to(ctx.services, ctx.database_id, spec.database_name, node, ctx.log)
