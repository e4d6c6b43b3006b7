"""A node's Patroni cluster as tasks drive it: its members' REST APIs, the leader it has, the
candidate a switchover or failover hands over to, and the mesh following a new primary."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

from controlplane.errors import ControlPlaneError, DependencyError, PreconditionError
from controlplane.nodes.common import ref_of
from controlplane.orchestrator.local_patroni import CONFIG_FILE
from controlplane.orchestrator.patroni import ClusterMember, ClusterView, Credentials, PatroniClient
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import Services, StepContext

# Patroni's member states of a replica that could take over now.
_HEALTHY_REPLICA = frozenset({"streaming", "running"})
# A switchover Patroni could not make is tried again this many times in all, each once the
# candidate streams (within `_CANDIDATE_SECONDS`).
_HANDOVER_ATTEMPTS = 3
_CANDIDATE_SECONDS = 120.0


class NodeCluster:
    """The instances of one node with replicas, and a client for each member's REST API (its
    address and credentials are read from the member's own Patroni configuration)."""

    def __init__(self, services: Services, node_name: str, rows: list[InstanceRow]) -> None:
        self.services = services
        self.node_name = node_name
        self.rows = rows

    @classmethod
    async def of(cls, services: Services, database_id: str, node_name: str) -> NodeCluster:
        rows = await instances.list_node_instances(services.pool, database_id, node_name)
        if len(rows) < 2 or any(r.supervisor != "patroni" for r in rows):
            raise PreconditionError(
                f"node {node_name} of {database_id} has no replicas: add a host to its "
                "host_ids to give it one",
                details={"node": node_name},
            )
        return cls(services, node_name, rows)

    def row(self, instance_id: str) -> InstanceRow | None:
        return next((r for r in self.rows if r.id == instance_id), None)

    async def client(self, row: InstanceRow) -> PatroniClient:
        """A client of `row`'s REST API (close it after use)."""
        text = await self.services.orchestrator.read_file(ref_of(row), CONFIG_FILE)
        if not text:
            raise PreconditionError(f"instance {row.id} has no patroni configuration")
        rest = json.loads(text)["restapi"]
        return PatroniClient(
            f"http://{rest['connect_address']}",
            Credentials(**rest["authentication"]),
            member=row.id,
            timeout=90.0,
        )

    async def hand_over(self, leader: str, candidate: str) -> str:
        """Patroni's switchover from `leader` to `candidate`, once the candidate streams.
        Patroni reports a switchover it could not make (503, nothing changed) when the candidate
        was busy at that moment, e.g. restarting to load a slot copy: it is tried again, up to
        `_HANDOVER_ATTEMPTS` times. Returns Patroni's answer."""
        row = self.row(leader)
        if row is None:
            raise PreconditionError(f"instance {leader} of node {self.node_name} is gone")

        def streaming(view: ClusterView) -> ClusterMember | None:
            return next(
                (m for m in view.replicas if m.name == candidate and m.state in _HEALTHY_REPLICA),
                None,
            )

        for attempt in range(1, _HANDOVER_ATTEMPTS + 1):
            await self.wait_for(streaming, f"{candidate} streaming", _CANDIDATE_SECONDS)
            async with await self.client(row) as client:
                try:
                    return await client.switchover(leader, candidate)
                except DependencyError as exc:
                    if exc.details.get("status_code") != 503 or attempt == _HANDOVER_ATTEMPTS:
                        raise
            leader_now = running_leader(await self.view())
            if leader_now is not None and leader_now.name != leader:
                return f"{leader_now.name} leads"
        raise AssertionError("unreachable")

    async def view(self) -> ClusterView:
        """The cluster as the first member to answer sees it (each reads it from etcd). All
        are asked at once: a lost member's host may never answer, and must not hold up the
        others for the client's whole timeout."""

        async def ask(row: InstanceRow) -> ClusterView:
            async with await self.client(row) as client:
                return await client.cluster()

        pending = {asyncio.create_task(ask(row)): row for row in self.rows}
        failures = []
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    pending.pop(task)
                    error = task.exception()
                    if error is None:
                        return task.result()
                    if not isinstance(error, ControlPlaneError):
                        raise error
                    failures.append(error.message)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        raise DependencyError(
            f"no patroni member of node {self.node_name} answered: " + "; ".join(failures)
        )

    async def wait_for(
        self, check: Callable[[ClusterView], ClusterMember | None], what: str, limit: float
    ) -> ClusterMember:
        """Poll the cluster until `check` names a member; DependencyError after `limit` s."""
        deadline = time.monotonic() + limit
        last = "no answer yet"
        while True:
            try:
                view = await self.view()
                found = check(view)
                if found is not None:
                    return found
                last = describe(view)
            except DependencyError as exc:
                last = exc.message
            if time.monotonic() > deadline:
                raise DependencyError(
                    f"node {self.node_name}: {what} did not happen within {limit:.0f} s ({last})"
                )
            await asyncio.sleep(1.0)


def describe(view: ClusterView) -> str:
    """`ha-n1 leader running tl 3, ha-n1-h2 replica streaming lag 0` (for task logs)."""
    parts = []
    for m in view.members:
        words = [m.name, m.role, m.state]
        if m.timeline is not None:
            words.append(f"tl {m.timeline}")
        if m.lag is not None:
            words.append(f"lag {m.lag}")
        parts.append(" ".join(words))
    return ", ".join(parts)


def running_leader(view: ClusterView) -> ClusterMember | None:
    leader = view.leader
    return leader if leader is not None and leader.state == "running" else None


def pick_candidate(view: ClusterView, wanted: str | None, node_name: str) -> ClusterMember:
    """The replica to hand the primary role to: `wanted`, which must be a healthy replica, or
    else the healthy replica least behind (a synchronous standby first)."""
    healthy = [m for m in view.replicas if m.state in _HEALTHY_REPLICA]
    if wanted is not None:
        member = next((m for m in view.members if m.name == wanted), None)
        if member is None:
            raise PreconditionError(
                f"instance {wanted} is not a member of node {node_name}'s cluster"
            )
        if member not in healthy:
            raise PreconditionError(
                f"instance {wanted} cannot take over node {node_name}: it is a "
                f"{member.role} in state {member.state} (a streaming replica can)"
            )
        return member
    if not healthy:
        raise PreconditionError(
            f"node {node_name} has no healthy replica to take over ({describe(view)})"
        )

    def behind(m: ClusterMember) -> tuple[int, int]:
        lag = m.lag if isinstance(m.lag, int) else 1 << 62
        return (0 if m.role == "sync_standby" else 1, lag)

    return min(healthy, key=behind)


async def wait_until(ctx: StepContext, scheduled_at: str | None, what: str) -> None:
    """Hold the task until `scheduled_at` (RFC 3339); a cancel ends the wait at once."""
    if scheduled_at is None:
        return
    at = datetime.fromisoformat(scheduled_at)
    remaining = (at - datetime.now(UTC)).total_seconds()
    if remaining <= 0:
        return
    await ctx.log.info(f"{what} is scheduled at {at.isoformat()}: waiting {remaining:.0f} s")
    while remaining > 0:
        ctx.check_cancel()
        await asyncio.sleep(min(remaining, 1.0))
        remaining = (at - datetime.now(UTC)).total_seconds()
