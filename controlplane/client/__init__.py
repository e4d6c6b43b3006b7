"""Typed client for the HTTP API: `Client` (blocking) and `AsyncClient` with the same methods.

Both return the msgspec models of `controlplane.models` (the same types the server encodes)
and raise `ApiError` subclasses carrying the API's `name`, `message` and
`details`. The URL and token come from the arguments, else `CONTROLPLANE_URL` /
`CONTROLPLANE_TOKEN`, else http://127.0.0.1:3000 and the local `<data dir>/admin-token`.

The names are loaded on first use: importing this package (or its pure `errors` module) does
not load the HTTP library, so a command that never sends a request starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controlplane.client.aio import AsyncClient
    from controlplane.client.core import (
        DEFAULT_URL,
        LogFollower,
        SseEvent,
        SseParser,
        resolve_token,
        resolve_url,
    )
    from controlplane.client.errors import (
        ApiBadRequest,
        ApiConflict,
        ApiError,
        ApiForbidden,
        ApiInvalidInput,
        ApiNotFound,
        ApiServerError,
        ApiUnauthorized,
        ApiUnreachable,
        error_from_response,
    )
    from controlplane.client.sync import Client
    from controlplane.models import (
        BackupCatalog,
        BackupSet,
        DatabaseOperation,
        LogEnd,
        RecoveryWindow,
        RestoreOperation,
        Schedule,
        ScheduleLastTask,
    )

_HOMES = {
    "AsyncClient": "controlplane.client.aio",
    "Client": "controlplane.client.sync",
    "DEFAULT_URL": "controlplane.client.core",
    "LogFollower": "controlplane.client.core",
    "SseEvent": "controlplane.client.core",
    "SseParser": "controlplane.client.core",
    "resolve_token": "controlplane.client.core",
    "resolve_url": "controlplane.client.core",
    "Body": "controlplane.client.core",
    "ClientBase": "controlplane.client.core",
    "STREAM_TIMEOUT": "controlplane.client.core",
    "unreachable": "controlplane.client.errors",
    **dict.fromkeys(
        (
            "ApiBadRequest",
            "ApiConflict",
            "ApiError",
            "ApiForbidden",
            "ApiInvalidInput",
            "ApiNotFound",
            "ApiServerError",
            "ApiUnauthorized",
            "ApiUnreachable",
            "error_from_response",
        ),
        "controlplane.client.errors",
    ),
    **dict.fromkeys(
        (
            "BackupCatalog",
            "BackupSet",
            "Database",
            "DatabaseOperation",
            "Host",
            "LogEnd",
            "LogEntry",
            "RestorePoint",
            "Task",
            "TaskLog",
            "Version",
            "RecoveryWindow",
            "RestoreOperation",
            "Schedule",
            "ScheduleLastTask",
        ),
        "controlplane.models",
    ),
}

__all__ = [
    "DEFAULT_URL",
    "ApiBadRequest",
    "ApiConflict",
    "ApiError",
    "ApiForbidden",
    "ApiInvalidInput",
    "ApiNotFound",
    "ApiServerError",
    "ApiUnauthorized",
    "ApiUnreachable",
    "AsyncClient",
    "BackupCatalog",
    "BackupSet",
    "Client",
    "DatabaseOperation",
    "LogEnd",
    "LogFollower",
    "RecoveryWindow",
    "RestoreOperation",
    "Schedule",
    "ScheduleLastTask",
    "SseEvent",
    "SseParser",
    "error_from_response",
    "resolve_token",
    "resolve_url",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
