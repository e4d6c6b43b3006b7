"""Route handlers for actions on a node's cluster (switchover, failover) and on one instance
(restart, stop, start), at pgEdge's paths. Each answers 202 with the task it started."""

from __future__ import annotations

from litestar import Response, post

from controlplane.api.bodies import read_body
from controlplane.api.contract import Contract
from controlplane.api.routes import AnyRequest, _actor, _json, _services
from controlplane.models import TaskAnswer
from controlplane.operations import node_actions
from controlplane.spec.node_actions import (
    FailoverRequest,
    RestartRequest,
    SwitchoverRequest,
    parse_failover,
    parse_restart,
    parse_switchover,
)

_TAGS = ("high availability",)
SWITCHOVER = Contract(
    summary="Switch a node's primary over to a replica",
    body=SwitchoverRequest,
    returns=TaskAnswer,
    conflicts=True,
    runs_commands=True,
    example={"candidate_instance_id": "example-n1-h2", "scheduled_at": "2026-12-01T22:00:00Z"},
    description=(
        "Patroni stops the primary cleanly and promotes the candidate (or the healthiest "
        "replica), so no committed row is lost; the mesh then follows the new primary. "
        "Refused (409) when the node has no replicas, no running primary or no healthy "
        "candidate. An empty body means now, to the best replica."
    ),
    tags=_TAGS,
)
FAILOVER = Contract(
    summary="Promote a replica of a node without its primary",
    body=FailoverRequest,
    returns=TaskAnswer,
    conflicts=True,
    runs_commands=True,
    example={"candidate_instance_id": "example-n1-h2"},
    description=(
        "For a primary that is lost. Refused (409) while the primary is healthy unless "
        "skip_validation is true: a failover may lose what the primary had not streamed."
    ),
    tags=_TAGS,
)
RESTART = Contract(
    summary="Restart an instance",
    body=RestartRequest,
    returns=TaskAnswer,
    conflicts=True,
    runs_commands=True,
    example={"scheduled_at": "2026-12-01T22:00:00Z"},
    tags=_TAGS,
)
STOP = Contract(
    summary="Stop an instance and keep it stopped",
    returns=TaskAnswer,
    conflicts=True,
    runs_commands=True,
    description="A primary with a healthy replica hands its role over first.",
    tags=_TAGS,
)
START = Contract(summary="Start a stopped instance", returns=TaskAnswer, conflicts=True, tags=_TAGS)
_NODE = "/v1/databases/{database_id:str}/nodes/{node:str}"
_INSTANCE = "/v1/databases/{database_id:str}/instances/{instance_id:str}"


@post(f"{_NODE}/switchover", opt={"scope": "write", "contract": SWITCHOVER}, status_code=202)
async def switchover_node(request: AnyRequest, database_id: str, node: str) -> Response[bytes]:
    body = await read_body(request, parse_switchover)
    task = await node_actions.start_switchover(
        _services(request), database_id, node, body, _actor(request)
    )
    return _json(TaskAnswer(task=task), 202)


@post(f"{_NODE}/failover", opt={"scope": "admin", "contract": FAILOVER}, status_code=202)
async def failover_node(request: AnyRequest, database_id: str, node: str) -> Response[bytes]:
    body = await read_body(request, parse_failover)
    task = await node_actions.start_failover(
        _services(request), database_id, node, body, _actor(request)
    )
    return _json(TaskAnswer(task=task), 202)


async def _instance_action(
    request: AnyRequest, database_id: str, instance_id: str, type: str, body: bytes
) -> Response[bytes]:
    task = await node_actions.start_instance_action(
        _services(request), database_id, instance_id, type, body, _actor(request)
    )
    return _json(TaskAnswer(task=task), 202)


@post(f"{_INSTANCE}/restart", opt={"scope": "write", "contract": RESTART}, status_code=202)
async def restart_instance(
    request: AnyRequest, database_id: str, instance_id: str
) -> Response[bytes]:
    body = await read_body(request, parse_restart)
    return await _instance_action(request, database_id, instance_id, "restart_instance", body)


@post(f"{_INSTANCE}/stop-instance", opt={"scope": "write", "contract": STOP}, status_code=202)
async def stop_instance(request: AnyRequest, database_id: str, instance_id: str) -> Response[bytes]:
    return await _instance_action(request, database_id, instance_id, "stop_instance", b"")


@post(f"{_INSTANCE}/start-instance", opt={"scope": "write", "contract": START}, status_code=202)
async def start_instance(
    request: AnyRequest, database_id: str, instance_id: str
) -> Response[bytes]:
    return await _instance_action(request, database_id, instance_id, "start_instance", b"")


NODE_ACTION_ROUTES = [
    switchover_node,
    failover_node,
    restart_instance,
    stop_instance,
    start_instance,
]
