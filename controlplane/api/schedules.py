"""Route handlers for a database's backup schedules: next run and last task per node."""

from __future__ import annotations

from litestar import Response, get

from controlplane.api.contract import Contract
from controlplane.api.routes import AnyRequest, _json, _services
from controlplane.models import Schedule, SchedulesAnswer
from controlplane.nodes.backups import effective_backup_config
from controlplane.nodes.common import spec_of
from controlplane.scheduler.loop import next_run_at
from controlplane.store import databases, schedules
from controlplane.system.clock import SystemClock


@get(
    "/v1/databases/{database_id:str}/schedules",
    opt={"contract": Contract(summary="Backup schedules per node", returns=SchedulesAnswer)},
)
async def list_schedules(request: AnyRequest, database_id: str) -> Response[bytes]:
    """Every node's schedules (a node-level backup_config replaces the database's)."""
    services = _services(request)
    row = await databases.get_database(services.pool, database_id)
    spec = spec_of(services, row)
    last = await schedules.last_tasks(services.pool, database_id)
    now = SystemClock().now()
    views = []
    for node in spec.nodes:
        config = effective_backup_config(spec, node.name)
        for schedule in config.schedules if config is not None else []:
            views.append(
                Schedule(
                    schedule_id=schedule.id,
                    node_name=node.name,
                    type=schedule.type,
                    cron_expression=schedule.cron_expression,
                    next_run_at=next_run_at(schedule.cron_expression, now),
                    last_task=last.get((node.name, schedule.id)),
                )
            )
    return _json(SchedulesAnswer(schedules=views))


SCHEDULE_ROUTES = [list_schedules]
