"""Actions on a node's Patroni cluster (switchover, failover) and on one instance (restart,
stop, start): each checked against the live cluster and refused before anything is touched,
then run as a task."""

from __future__ import annotations

from controlplane.errors import (
    DatabaseNotModifiableError,
    InvalidInputError,
    NotFoundError,
    PreconditionError,
)
from controlplane.models import Task
from controlplane.nodes.cluster import NodeCluster, pick_candidate, running_leader
from controlplane.operations.backups import enqueue_node_task
from controlplane.spec.node_actions import parse_failover, parse_restart, parse_switchover
from controlplane.spec.paths import problem
from controlplane.store import databases, instances
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import Services
from controlplane.tasks.inputs import InstanceActionInput, NodeActionInput
from controlplane.workflows.failover_node import healthy_primary_refusal

# Databases an operation is making, restoring or removing: their instances are not ours to move.
_BUSY_STATES = ("creating", "deleting", "restoring")


async def start_switchover(
    services: Services, database_id: str, node: str, body: bytes, actor: str
) -> Task:
    """Validate a switchover against the cluster as it is now, and enqueue it."""
    request = parse_switchover(body)
    cluster = await _cluster(services, database_id, node, request.candidate_instance_id)
    view = await cluster.view()
    if running_leader(view) is None:
        raise PreconditionError(
            f"node {node} of {database_id} has no running primary: a switchover needs one; "
            "a failover promotes a replica without it"
        )
    pick_candidate(view, request.candidate_instance_id, node)
    scheduled = None if request.scheduled_at is None else request.scheduled_at.isoformat()
    task_input = NodeActionInput(
        candidate_instance_id=request.candidate_instance_id, scheduled_at=scheduled
    )
    return await enqueue_node_task(services, database_id, node, "switchover", task_input, actor)


async def start_failover(
    services: Services, database_id: str, node: str, body: bytes, actor: str
) -> Task:
    """Validate a failover (refused while the primary is healthy, unless told to skip that
    check) and enqueue it."""
    request = parse_failover(body)
    cluster = await _cluster(services, database_id, node, request.candidate_instance_id)
    view = await cluster.view()
    leader = running_leader(view)
    if leader is not None and not request.skip_validation:
        raise PreconditionError(healthy_primary_refusal(node, leader.name))
    pick_candidate(view, request.candidate_instance_id, node)
    task_input = NodeActionInput(
        candidate_instance_id=request.candidate_instance_id,
        skip_validation=request.skip_validation,
    )
    return await enqueue_node_task(services, database_id, node, "failover", task_input, actor)


async def start_instance_action(
    services: Services, database_id: str, instance_id: str, type: str, body: bytes, actor: str
) -> Task:
    """Enqueue restart_instance, stop_instance or start_instance for one instance."""
    scheduled = None
    if type == "restart_instance":
        at = parse_restart(body).scheduled_at
        scheduled = None if at is None else at.isoformat()
    row = await _instance(services, database_id, instance_id)
    task_input = InstanceActionInput(instance_id=row.id, scheduled_at=scheduled)
    return await enqueue_node_task(services, database_id, row.node_name, type, task_input, actor)


async def _cluster(
    services: Services, database_id: str, node: str, candidate: str | None
) -> NodeCluster:
    await _modifiable(services, database_id)
    if await instances.get_instance(services.pool, database_id, node) is None:
        raise NotFoundError(
            f"node {node} of database {database_id} not found",
            details={"database_id": database_id, "node": node},
        )
    cluster = await NodeCluster.of(services, database_id, node)
    if candidate is not None:
        row = cluster.row(candidate)
        names = ", ".join(r.id for r in cluster.rows)
        if row is None:
            message = f"{candidate} is not an instance of node {node} (its instances: {names})"
            raise InvalidInputError([problem("candidate_instance_id", message)])
        if row.role == "primary":
            message = f"{candidate} is node {node}'s primary already; name one of its replicas"
            raise InvalidInputError([problem("candidate_instance_id", message)])
    return cluster


async def _instance(services: Services, database_id: str, instance_id: str) -> InstanceRow:
    await _modifiable(services, database_id)
    row = await instances.find_instance(services.pool, database_id, instance_id)
    if row is None:
        raise NotFoundError(
            f"instance {instance_id} of database {database_id} not found",
            details={"database_id": database_id, "instance_id": instance_id},
        )
    return row


async def _modifiable(services: Services, database_id: str) -> None:
    row = await databases.get_database(services.pool, database_id)
    if row.state in _BUSY_STATES:
        raise DatabaseNotModifiableError(f"database {database_id} is {row.state}")
