"""Route handlers for /v1: databases, tasks, task logs, hosts, version, health."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, get_args

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.response import ServerSentEvent, ServerSentEventMessage

from controlplane import __version__
from controlplane.api.bodies import read_body
from controlplane.api.contract import CREATE_EXAMPLE, Contract, Query
from controlplane.api.params import invalid_path_params
from controlplane.api.read_cache import ReadCache
from controlplane.errors import InvalidInputError
from controlplane.models import (
    TERMINAL_STATUSES,
    BackupCatalog,
    Database,
    DatabaseOperation,
    DatabasesAnswer,
    Health,
    HostsAnswer,
    LogEnd,
    RestoreOperation,
    Task,
    TaskAnswer,
    TaskLog,
    TasksAnswer,
    TaskStatus,
    TaskType,
    Version,
)
from controlplane.operations import backups, databases, restores
from controlplane.spec import (
    parse_backup_request,
    parse_database_request,
    parse_restore_request,
    parse_verify_request,
)
from controlplane.spec.models import BackupRequest, DatabaseRequest, RestoreRequest, VerifyRequest
from controlplane.store import logs, tasks
from controlplane.tasks.context import Services

AnyRequest = Request[Any, Any, Any]
_TASK_TYPES = set(get_args(TaskType))
_TASK_STATUSES = set(get_args(TaskStatus))
# pgEdge's spellings of the sort order mean the same as ours.
_SORT_ORDERS = {
    "asc": "asc",
    "desc": "desc",
    "ascend": "asc",
    "descend": "desc",
    "ascending": "asc",
    "descending": "desc",
}


# -- what each route takes and returns (api/contract.py turns these into the OpenAPI document)
_ID = {"type": "string", "format": "uuid"}
CREATE = Contract(
    summary="Create a database",
    body=DatabaseRequest,
    returns=DatabaseOperation,
    conflicts=True,
    example=CREATE_EXAMPLE,
    description="Validates the whole spec (every problem at once, 422) and starts a create task.",
)
LIST_DATABASES = Contract(summary="List databases", returns=DatabasesAnswer)
GET_DATABASE = Contract(summary="Get a database, its instances and their state", returns=Database)
UPDATE = Contract(
    summary="Update a database to a new desired spec",
    body=DatabaseRequest,
    returns=DatabaseOperation,
    conflicts=True,
    example=CREATE_EXAMPLE,
)
DELETE = Contract(summary="Delete a database", returns=TaskAnswer, conflicts=True)
LIST_TASKS = Contract(
    summary="List tasks (newest first unless sort_order=asc)",
    returns=TasksAnswer,
    query=(
        Query("status", {"enum": sorted(_TASK_STATUSES)}, "only tasks in this status"),
        Query("type", {"enum": sorted(_TASK_TYPES)}, "only tasks of this type"),
        Query("after_task_id", _ID, "the page after this task"),
        Query("parent_id", _ID, "only the children of this task"),
        Query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most (100)"),
        Query(
            "sort_order",
            {"enum": sorted(_SORT_ORDERS)},
            "by creation time (desc; pgEdge's ascend/descend too)",
        ),
    ),
)
LIST_ALL_TASKS = Contract(
    summary=LIST_TASKS.summary,
    returns=TasksAnswer,
    query=(
        *LIST_TASKS.query,
        Query(
            "scope",
            {"enum": ["database", "host"]},
            "tasks of one database, or of one host (none: every task here belongs to a database)",
        ),
        Query("entity_id", {"type": "string"}, "the database (scope=database) or host id"),
    ),
)
GET_TASK = Contract(summary="Get a task and its steps", returns=Task, strict_query=True)
CANCEL = Contract(summary="Ask a task to stop", returns=Task, conflicts=True, strict_query=True)
CANCEL_ALIAS = Contract(
    summary="Ask a task to stop (pgEdge's GET spelling of the POST)",
    returns=Task,
    conflicts=True,
    strict_query=True,
)
TASK_LOG = Contract(
    summary="Read a task's log (JSON page, or text/event-stream to follow it)",
    description=(
        "With `after_entry_id`, the next `limit` entries after it (0: from the start). Without "
        "it, the newest `limit` entries, oldest first, as pgEdge answers; the page's "
        "`last_entry_id` is the cursor for what follows."
    ),
    returns=TaskLog,
    streams=True,
    query=(
        Query(
            "after_entry_id",
            {"type": "integer", "minimum": 0},
            "entries after this one (0: from the start; none: the newest `limit`)",
        ),
        Query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most (100)"),
    ),
)
BACKUP = Contract(
    summary="Back up a node",
    body=BackupRequest,
    returns=TaskAnswer,
    conflicts=True,
    example={"type": "full", "annotations": {"reason": "before upgrade"}},
)
CATALOG = Contract(
    summary="A node's backup sets, recovery window and restore points",
    returns=BackupCatalog,
    runs_commands=True,
)
VERIFY = Contract(
    summary="Verify a node's backups, or drill a restore of one set",
    body=VerifyRequest,
    returns=TaskAnswer,
    conflicts=True,
    runs_commands=True,
    description="An empty body runs `pgbackrest verify` of every set. With `drill: true`, a "
    "restore drill: the set named by `set` (else the newest) is restored into a scratch "
    "instance with archiving off, recovered, checked with pg_amcheck and its rows counted per "
    "table, then removed; the outcome shows in the catalog as the set's `last_drill`.",
)
EXPIRE = Contract(
    summary="Expire a backup set and the sets that depend on it",
    returns=TaskAnswer,
    conflicts=True,
    runs_commands=True,
    query=(Query("force", {"enum": ["true", "false"]}, "expire even the last restorable set"),),
)
RESTORE = Contract(
    summary="Restore nodes in place from a backup",
    body=RestoreRequest,
    returns=RestoreOperation,
    conflicts=True,
    example={
        "restore_config": {
            "source_database_id": "example",
            "source_node_name": "n1",
            "repository": {"type": "posix", "base_path": "/var/lib/controlplane-backups"},
            "restore_options": {"type": "time", "target": "2026-11-30 12:00:00+00"},
        }
    },
)
HOSTS = Contract(summary="The hosts instances run on", returns=HostsAnswer)
VERSION = Contract(summary="The control plane's version", returns=Version)
HEALTH = Contract(summary="Liveness: the state store answers", returns=Health)


def _services(request: AnyRequest) -> Services:
    services: Services = request.app.state.services
    return services


def _actor(request: AnyRequest) -> str:
    return str(request.state.get("actor", "unknown"))


# Entry ids are bigint: a larger cursor could only fail in the store.
_MAX_ENTRY_ID = 2**62


# An unknown parameter's name is echoed in the error: bounded, and at most a few of them.
_NAME_SHOWN = 64
_UNKNOWN_SHOWN = 8


def _known_query(request: AnyRequest, contract: Contract) -> None:
    """422 naming every query parameter `contract` does not declare: a misspelt filter
    (`?stauts=failed`) would otherwise answer as if no filter were given."""
    known = {q.name for q in contract.query}
    unknown = sorted({name for name in request.query_params if name not in known})
    if not unknown:
        return
    allowed = ", ".join(sorted(known)) or "none"
    raise InvalidInputError(
        [
            {
                "path": f"query.{name[:_NAME_SHOWN]}",
                "message": f"unknown query parameter {name[:_NAME_SHOWN]!r} (known: {allowed})",
            }
            for name in unknown[:_UNKNOWN_SHOWN]
        ]
    )


def _int_param(request: AnyRequest, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(
            [{"path": f"query.{name}", "message": "must be an integer"}]
        ) from None
    if not low <= value <= high:
        raise InvalidInputError(
            [{"path": f"query.{name}", "message": f"must be between {low} and {high}"}]
        )
    return value


def _choice_param(request: AnyRequest, name: str, allowed: set[str]) -> str | None:
    raw: str | None = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw not in allowed:
        raise InvalidInputError(
            [{"path": f"query.{name}", "message": f"must be one of {', '.join(sorted(allowed))}"}]
        )
    return raw


def _uuid_param(request: AnyRequest, name: str) -> uuid.UUID | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    parsed = tasks.parse_task_id(raw)
    if parsed is None:
        raise InvalidInputError([{"path": f"query.{name}", "message": "must be a task id (uuid)"}])
    return parsed


def _json(value: Any, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


async def _kept_json(
    request: AnyRequest,
    key: Hashable,
    topic: str,
    build: Callable[[], Awaitable[Any]],
    *,
    with_facts: bool = False,
) -> Response[bytes]:
    """A read route's answer from the read cache (api/read_cache.py), built by `build` when
    what it shows has changed since it was last encoded."""

    async def encoded() -> bytes:
        return msgspec.json.encode(await build())

    cache: ReadCache = request.app.state.read_cache
    body = await cache.answer(key, topic, encoded, with_facts=with_facts)
    return Response(body, status_code=200, media_type="application/json")


@post("/v1/databases", opt={"scope": "write", "contract": CREATE}, status_code=202)
async def create_database(request: AnyRequest) -> Response[bytes]:
    body = await read_body(request, parse_database_request)
    task, database = await databases.create_database(_services(request), body, _actor(request))
    return _json(DatabaseOperation(task=task, database=database), 202)


@get("/v1/databases", opt={"contract": LIST_DATABASES})
async def list_databases(request: AnyRequest) -> Response[bytes]:
    services = _services(request)

    async def build() -> DatabasesAnswer:
        return DatabasesAnswer(databases=await databases.list_databases(services))

    return await _kept_json(request, ("databases",), "databases", build, with_facts=True)


@get("/v1/databases/{database_id:str}", opt={"contract": GET_DATABASE})
async def get_database(request: AnyRequest, database_id: str) -> Response[bytes]:
    services = _services(request)
    return await _kept_json(
        request,
        ("database", database_id),
        "databases",
        lambda: databases.get_database(services, database_id),
        with_facts=True,
    )


@post(
    "/v1/databases/{database_id:str}", opt={"scope": "write", "contract": UPDATE}, status_code=202
)
async def update_database(request: AnyRequest, database_id: str) -> Response[bytes]:
    body = await read_body(request, parse_database_request)
    task, database = await databases.update_database(
        _services(request), database_id, body, _actor(request)
    )
    return _json(DatabaseOperation(task=task, database=database), 202)


@delete(
    "/v1/databases/{database_id:str}", opt={"scope": "admin", "contract": DELETE}, status_code=202
)
async def delete_database(request: AnyRequest, database_id: str) -> Response[bytes]:
    task = await databases.delete_database(_services(request), database_id, _actor(request))
    return _json(TaskAnswer(task=task), 202)


async def _list_tasks(
    request: AnyRequest, database_id: str | None, contract: Contract
) -> Response[bytes]:
    _known_query(request, contract)
    order = _SORT_ORDERS[_choice_param(request, "sort_order", set(_SORT_ORDERS)) or "desc"]
    services = _services(request)
    query: dict[str, Any] = dict(
        database_id=database_id,
        status=_choice_param(request, "status", _TASK_STATUSES),
        type=_choice_param(request, "type", _TASK_TYPES),
        after_task_id=_uuid_param(request, "after_task_id"),
        parent_id=_uuid_param(request, "parent_id"),
        limit=_int_param(request, "limit", 100, 1, 1000),
        descending=order == "desc",
    )

    async def build() -> TasksAnswer:
        found = await tasks.list_tasks(services.pool, **query)
        if not found and database_id is not None:  # none: is there such a database at all?
            await databases.get_database(services, database_id)
        return TasksAnswer(tasks=found)

    return await _kept_json(request, ("tasks", *sorted(query.items())), "tasks", build)


@get("/v1/databases/{database_id:str}/tasks", opt={"contract": LIST_TASKS})
async def list_database_tasks(request: AnyRequest, database_id: str) -> Response[bytes]:
    return await _list_tasks(request, database_id, LIST_TASKS)


@get("/v1/tasks", opt={"contract": LIST_ALL_TASKS})
async def list_all_tasks(request: AnyRequest) -> Response[bytes]:
    """Every task, or one scope's (pgEdge's `scope` and `entity_id`): every task here belongs
    to a database, so `scope=host` lists none."""
    _known_query(request, LIST_ALL_TASKS)
    scope = _choice_param(request, "scope", {"database", "host"})
    entity_id = request.query_params.get("entity_id") or None
    if entity_id is not None and scope is None:
        raise InvalidInputError(
            [{"path": "query.scope", "message": "entity_id needs a scope: database or host"}]
        )
    if scope == "host":
        return _json(TasksAnswer(tasks=[]))
    if scope == "database" and entity_id is not None:
        bad = invalid_path_params({"database_id": entity_id})
        if bad:
            raise InvalidInputError(
                [{"path": "query.entity_id", "message": f"must be {bad[0][1]}"}]
            )
        return await _list_tasks(request, entity_id, LIST_ALL_TASKS)
    return await _list_tasks(request, None, LIST_ALL_TASKS)


@get("/v1/databases/{database_id:str}/tasks/{task_id:str}", opt={"contract": GET_TASK})
async def get_task(request: AnyRequest, database_id: str, task_id: str) -> Response[bytes]:
    _known_query(request, GET_TASK)
    pool = _services(request).pool
    return await _kept_json(
        request,
        ("task", database_id, task_id),
        "tasks",
        lambda: tasks.get_task(pool, task_id, database_id=database_id),
    )


@post(
    "/v1/databases/{database_id:str}/tasks/{task_id:str}/cancel",
    opt={"scope": "write", "contract": CANCEL},
    status_code=202,
)
async def cancel_task(request: AnyRequest, database_id: str, task_id: str) -> Response[bytes]:
    _known_query(request, CANCEL)
    task = await tasks.request_cancel(_services(request).pool, task_id, database_id=database_id)
    return _json(task, 202)


@get(
    "/v1/databases/{database_id:str}/tasks/{task_id:str}/cancel",
    opt={"scope": "write", "contract": CANCEL_ALIAS},
    status_code=202,
)
async def cancel_task_alias(request: AnyRequest, database_id: str, task_id: str) -> Response[bytes]:
    """pgEdge cancels with a GET: the same as the POST, with the same write scope."""
    _known_query(request, CANCEL_ALIAS)
    task = await tasks.request_cancel(_services(request).pool, task_id, database_id=database_id)
    return _json(task, 202)


# The route's media type is the stream's: Litestar gives a streamed answer the route's type
# over its own (a browser's EventSource refuses any other), and a JSON page sets its own.
@get(
    "/v1/databases/{database_id:str}/tasks/{task_id:str}/log",
    opt={"contract": TASK_LOG},
    media_type="text/event-stream",
)
async def task_log(request: AnyRequest, database_id: str, task_id: str) -> Any:
    _known_query(request, TASK_LOG)
    pool = _services(request).pool
    task = await tasks.get_task(pool, task_id, database_id=database_id)
    after = _int_param(request, "after_entry_id", 0, 0, _MAX_ENTRY_ID)
    limit = _int_param(request, "limit", 100, 1, 1000)
    tail = request.query_params.get("after_entry_id") in (None, "")
    if "text/event-stream" in request.headers.get("accept", ""):
        last_event = request.headers.get("last-event-id", "")
        # ASCII digits only ("²".isdigit() holds, int("²") fails), and within bigint.
        if last_event.isascii() and last_event.isdigit() and len(last_event) <= 19:
            after = max(after, min(int(last_event), _MAX_ENTRY_ID))
        return ServerSentEvent(_follow(_services(request), uuid.UUID(task.task_id), after))
    if tail:  # no cursor: the newest entries, as pgEdge pages a log
        entries = await logs.read_newest_entries(pool, uuid.UUID(task.task_id), limit=limit)
    else:
        entries = await logs.read_entries(
            pool, uuid.UUID(task.task_id), after_entry_id=after, limit=limit
        )
    last = entries[-1].entry_id if entries else after
    return _json(
        TaskLog(task_id=task.task_id, task_status=task.status, last_entry_id=last, entries=entries)
    )


async def _follow(
    services: Services, task_id: uuid.UUID, after: int
) -> AsyncIterator[ServerSentEventMessage]:
    """Stream entries as they are written; end once the task is terminal and fully drained.

    The status is read before the entries: the final entry commits with the terminal status, so
    a terminal status read first guarantees the following read sees every entry.
    """
    while True:
        row = await tasks.get_task_row(services.pool, task_id)
        status = row.status if row else "failed"
        entries = await logs.read_entries(services.pool, task_id, after_entry_id=after, limit=500)
        for entry in entries:
            after = entry.entry_id
            yield ServerSentEventMessage(
                data=msgspec.json.encode(entry).decode(), event="entry", id=str(entry.entry_id)
            )
        if status in TERMINAL_STATUSES and not entries:
            yield ServerSentEventMessage(
                data=msgspec.json.encode(LogEnd(task_status=status, last_entry_id=after)).decode(),
                event="end",
            )
            return
        if not entries:
            await asyncio.sleep(0.25)


@post(
    "/v1/databases/{database_id:str}/nodes/{node:str}/backups",
    opt={"scope": "write", "contract": BACKUP},
    status_code=202,
)
async def start_backup(request: AnyRequest, database_id: str, node: str) -> Response[bytes]:
    body = await read_body(request, parse_backup_request)
    task = await backups.start_backup(_services(request), database_id, node, body, _actor(request))
    return _json(TaskAnswer(task=task), 202)


@get("/v1/databases/{database_id:str}/nodes/{node:str}/backups", opt={"contract": CATALOG})
async def list_backups(request: AnyRequest, database_id: str, node: str) -> Response[bytes]:
    return _json(await backups.backup_catalog(_services(request), database_id, node))


@post(
    "/v1/databases/{database_id:str}/nodes/{node:str}/backups/verify",
    opt={"scope": "write", "contract": VERIFY},
    status_code=202,
)
async def verify_backups(request: AnyRequest, database_id: str, node: str) -> Response[bytes]:
    body = await read_body(request, parse_verify_request)
    task = await backups.start_verify(_services(request), database_id, node, body, _actor(request))
    return _json(TaskAnswer(task=task), 202)


@delete(
    "/v1/databases/{database_id:str}/nodes/{node:str}/backups/{label:str}",
    opt={"scope": "admin", "contract": EXPIRE},
    status_code=202,
)
async def expire_backup(
    request: AnyRequest, database_id: str, node: str, label: str
) -> Response[bytes]:
    force = _choice_param(request, "force", {"true", "false"}) == "true"
    task = await backups.start_expire(
        _services(request), database_id, node, label, force=force, actor=_actor(request)
    )
    return _json(TaskAnswer(task=task), 202)


@post(
    "/v1/databases/{database_id:str}/restore",
    opt={"scope": "admin", "contract": RESTORE},
    status_code=202,
)
async def restore_database(request: AnyRequest, database_id: str) -> Response[bytes]:
    services = _services(request)
    # With restores disabled, start_restore refuses before it reads the body.
    body = await read_body(
        request, parse_restore_request if services.settings.allow_restore else None
    )
    task, node_tasks, database = await restores.start_restore(
        services, database_id, body, _actor(request)
    )
    return _json(RestoreOperation(task=task, node_tasks=node_tasks, database=database), 202)


@get("/v1/hosts", opt={"contract": HOSTS})
async def list_hosts(request: AnyRequest) -> Response[bytes]:
    """Every host with the number of instances placed on it (primaries and replicas)."""
    return _json(HostsAnswer(hosts=await databases.list_hosts(_services(request))))


@get("/v1/version", opt={"public": True, "contract": VERSION})
async def version() -> Response[bytes]:
    return _json(Version(version=__version__))


@get("/health", opt={"public": True, "contract": HEALTH})
async def health(request: AnyRequest) -> Response[bytes]:
    await _services(request).pool.fetchval("SELECT 1")
    return _json(Health(status="ok"))


ROUTES = [
    create_database,
    list_databases,
    get_database,
    update_database,
    delete_database,
    list_database_tasks,
    list_all_tasks,
    get_task,
    cancel_task,
    cancel_task_alias,
    task_log,
    start_backup,
    list_backups,
    verify_backups,
    expire_backup,
    restore_database,
    list_hosts,
    version,
    health,
]
