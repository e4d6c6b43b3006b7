"""The API's contract: the response envelopes and error body as msgspec Structs, what each route
takes and returns (declared on the route, in `opt["contract"]`), and the OpenAPI document built
from those declarations and the Structs' own JSON Schema (`/schema/openapi.json`).

A handler encodes the Struct its contract names; tests hold every route to its declaration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar.handlers import HTTPRouteHandler

from controlplane import __version__
from controlplane.models import ErrorBody

# -- route declarations ---------------------------------------------------------------------

# A body a pgEdge user would send: one owner, two nodes, backups to a posix repository.
CREATE_EXAMPLE: dict[str, Any] = {
    "id": "example",
    "spec": {
        "database_name": "app",
        "database_users": [
            {
                "username": "admin",
                "password": "change-me-please",
                "db_owner": True,
                "attributes": ["LOGIN"],
            }
        ],
        "nodes": [{"name": "n1"}, {"name": "n2"}],
        "backup_config": {
            "repositories": [{"type": "posix", "base_path": "/var/lib/controlplane-backups"}],
            "schedules": [{"id": "nightly", "type": "full", "cron_expression": "0 2 * * *"}],
        },
    },
}


@dataclass(frozen=True)
class Query:
    """One query parameter: its name, JSON Schema and meaning."""

    name: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True)
class Contract:
    """What a route takes and returns. `body` and `returns` are Structs (or types msgspec can
    describe); `returns=None` with `media_type` for a non-JSON answer (metrics)."""

    summary: str
    returns: Any
    body: Any = None
    query: tuple[Query, ...] = ()
    media_type: str = "application/json"
    # Statuses the route may answer besides the usual ones (see `_errors`).
    conflicts: bool = False
    runs_commands: bool = False
    example: dict[str, Any] | None = None
    description: str = ""
    streams: bool = False
    tags: tuple[str, ...] = field(default=())
    # Refuses any query parameter (422): a route with no `query` that still checks them.
    strict_query: bool = False


_ERROR_WORDS = {
    400: "malformed request: not JSON, nested too deep, or a NUL in a string",
    401: "missing or invalid bearer token",
    403: "the token's scope is not enough (details.required_scope), or restores are disabled",
    404: "no such database, node, task or backup set",
    409: "conflicts with the database's state or a task in progress",
    413: "request body over the configured limit",
    422: "invalid input: details.errors lists every problem with its JSON path",
    502: "a command or dependency the control plane ran failed",
}


def _errors(route: HTTPRouteHandler, contract: Contract, has_path_params: bool) -> list[int]:
    statuses = []
    if contract.body is not None:
        statuses += [400, 413]
    if not route.opt.get("public"):
        statuses += [401, 403]
    if has_path_params:
        statuses.append(404)
    if contract.conflicts:
        statuses.append(409)
    if contract.body is not None or contract.query or contract.strict_query:
        statuses.append(422)
    if contract.runs_commands:
        statuses.append(502)
    return sorted(set(statuses))


def contract_of(route: HTTPRouteHandler) -> Contract:
    found = route.opt.get("contract")
    if not isinstance(found, Contract):
        raise TypeError(f"route {route.handler_name} declares no contract")
    return found


def openapi_document(routes: list[HTTPRouteHandler]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`, every shape from its Struct's JSON Schema."""
    types: list[Any] = [ErrorBody]
    for route in routes:
        contract = contract_of(route)
        types += [t for t in (contract.body, contract.returns) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        contract = contract_of(route)
        for path in route.paths:
            openapi_path, params = _path_params(path)
            for method in sorted(route.http_methods):
                paths.setdefault(openapi_path, {})[method.lower()] = _operation(
                    route, contract, params, by_type
                )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "controlplane",
            "version": __version__,
            "description": (
                "Declarative PostgreSQL databases: specs, tasks, backups and restores. "
                "Every route but /health, /v1/version and /schema needs a bearer token "
                "(`controlplane token create`)."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token of scope read, write or admin.",
                }
            },
        },
    }


def _path_params(path: str) -> tuple[str, list[str]]:
    """`/v1/databases/{database_id:str}` → (`/v1/databases/{database_id}`, [database_id])."""
    parts, params = [], []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1].split(":", 1)[0]
            params.append(name)
            part = "{" + name + "}"
        parts.append(part)
    return "/".join(parts) or "/", params


def _operation(
    route: HTTPRouteHandler,
    contract: Contract,
    path_params: list[str],
    by_type: dict[Any, dict[str, Any]],
) -> dict[str, Any]:
    status = str(route.status_code)
    if contract.returns is None:
        content = {contract.media_type: {"schema": {"type": "string"}}}
    else:
        content = {contract.media_type: {"schema": by_type[contract.returns]}}
    if contract.streams:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {
        status: {"description": contract.summary, "content": content},
    }
    error_schema = {"application/json": {"schema": by_type[ErrorBody]}}
    for code in _errors(route, contract, bool(path_params)):
        responses[str(code)] = {"description": _ERROR_WORDS[code], "content": error_schema}
    scope = "public" if route.opt.get("public") else route.opt.get("scope", "read")
    operation: dict[str, Any] = {
        "operationId": route.handler_name,
        "summary": contract.summary,
        "description": (contract.description + f"\n\nScope: {scope}.").strip(),
        "tags": list(contract.tags) or [_tag(route)],
        "parameters": [
            *(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in path_params
            ),
            *(
                {
                    "name": q.name,
                    "in": "query",
                    "required": False,
                    "schema": q.schema,
                    "description": q.description,
                }
                for q in contract.query
            ),
        ],
        "responses": responses,
    }
    if route.opt.get("public"):
        operation["security"] = []
    if contract.body is not None:
        body: dict[str, Any] = {"schema": by_type[contract.body]}
        if contract.example is not None:
            body["example"] = contract.example
        operation["requestBody"] = {"required": True, "content": {"application/json": body}}
    return operation


def _tag(route: HTTPRouteHandler) -> str:
    path = next(iter(route.paths))
    for word in ("backups", "restore-points", "restore", "tasks", "schedules", "hosts"):
        if f"/{word}" in path:
            return word
    return "databases" if path.startswith("/v1/databases") else "service"
