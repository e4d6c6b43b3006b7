"""Route handlers for a node's named restore points (the targets of `name` restores)."""

from __future__ import annotations

from litestar import Response, get, post

from controlplane.api.bodies import read_body
from controlplane.api.contract import Contract
from controlplane.api.routes import AnyRequest, _actor, _json, _services
from controlplane.models import RestorePoint, RestorePointsAnswer
from controlplane.operations import backups
from controlplane.spec import parse_request
from controlplane.spec.restore_options import RestorePointRequest

CREATE_POINT = Contract(
    summary="Write a named restore point on a node and wait until it is archived",
    body=RestorePointRequest,
    returns=RestorePoint,
    conflicts=True,
    runs_commands=True,
    example={"name": "before-migration-42"},
)


@post(
    "/v1/databases/{database_id:str}/nodes/{node:str}/restore-points",
    opt={"scope": "write", "contract": CREATE_POINT},
    status_code=201,
)
async def create_restore_point(request: AnyRequest, database_id: str, node: str) -> Response[bytes]:
    """`{name}`: write the restore point on the running node, wait (at most 60 s) until its WAL
    is in the repository, record it; 201 with the restore point."""
    body = await read_body(request, lambda raw: parse_request(raw, RestorePointRequest))
    point = await backups.create_restore_point(
        _services(request), database_id, node, body, _actor(request)
    )
    return _json(point, 201)


@get(
    "/v1/databases/{database_id:str}/nodes/{node:str}/restore-points",
    opt={"contract": Contract(summary="A node's restore points", returns=RestorePointsAnswer)},
)
async def list_restore_points(request: AnyRequest, database_id: str, node: str) -> Response[bytes]:
    """The node's recorded restore points, oldest first."""
    points = await backups.list_node_restore_points(_services(request), database_id, node)
    return _json(RestorePointsAnswer(restore_points=points))


RESTORE_POINT_ROUTES = [create_restore_point, list_restore_points]
