"""Route handler for a database's health view (`operations.health`)."""

from __future__ import annotations

from litestar import Response, get

from controlplane.api.contract import Contract
from controlplane.api.routes import AnyRequest, _json, _services
from controlplane.models import DatabaseHealth
from controlplane.operations.health import database_health

GET_HEALTH = Contract(
    summary="A database's health: state, archiving, lag, backups and recovery window per node",
    returns=DatabaseHealth,
    description=(
        "Per node: the primary's WAL archiver, each replica's replay lag, the subscriptions it"
        " applies, the newest successful and failed backup of each type, and the span a"
        " point-in-time restore reaches. `state` is `degraded` (with the reasons in `error`)"
        " when an instance is down, archiving keeps failing or a subscription stays down."
        " Read from the store and the monitor's last observation: never runs pgBackRest."
    ),
)


@get("/v1/databases/{database_id:str}/health", opt={"contract": GET_HEALTH})
async def get_database_health(request: AnyRequest, database_id: str) -> Response[bytes]:
    return _json(await database_health(_services(request), database_id))


HEALTH_ROUTES = [get_database_health]
