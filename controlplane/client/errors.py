"""The API's errors as exceptions: one class per HTTP status family, each with the API's `name`,
`message` and `details`. Pure (no HTTP library), so the CLI can name them without loading one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from controlplane.models import ErrorBody


class ApiError(Exception):
    """An error answered by the API (or met on the way to it); `name` is the API's stable id."""

    def __init__(
        self,
        message: str,
        *,
        name: str = "error",
        status: int = 0,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.name = name
        self.status = status
        self.details: dict[str, Any] = dict(details or {})


class ApiBadRequest(ApiError):
    """400: the body is not JSON (`malformed_request`) or the request is otherwise unusable."""


class ApiUnauthorized(ApiError):
    """401: missing or invalid token."""


class ApiForbidden(ApiError):
    """403: the token's scope is too low (`forbidden`) or restores are off."""


class ApiNotFound(ApiError):
    """404: no such database, node, task, backup set or route."""


class ApiConflict(ApiError):
    """409: e.g. `operation_in_progress`, whose blocking task is `task_id`."""

    @property
    def task_id(self) -> str | None:
        value = self.details.get("task_id")
        return str(value) if value is not None else None


class ApiInvalidInput(ApiError):
    """422: every validation problem, each `{path, message}`, in `errors`."""

    @property
    def errors(self) -> list[dict[str, str]]:
        return list(self.details.get("errors", []))


class ApiServerError(ApiError):
    """5xx: a failing dependency (502) or an internal error."""


class ApiUnreachable(ApiError):
    """The server could not be reached (connection refused, timeout, TLS failure)."""


_ERRORS: dict[int, type[ApiError]] = {
    400: ApiBadRequest,
    401: ApiUnauthorized,
    403: ApiForbidden,
    404: ApiNotFound,
    409: ApiConflict,
    422: ApiInvalidInput,
}


def error_from_response(status: int, body: bytes) -> ApiError:
    """The typed error for an HTTP error answer (a body not in the API's shape is kept as text)."""
    try:
        parsed = msgspec.json.decode(body, type=ErrorBody)
        name, message, details = parsed.name, parsed.message, parsed.details
    except msgspec.DecodeError:
        text = body.decode(errors="replace").strip()
        name, message, details = f"http_{status}", text[:300] or f"http status {status}", {}
    cls = _ERRORS.get(status, ApiServerError if status >= 500 else ApiError)
    return cls(message, name=name, status=status, details=details)


def unreachable(url: str, exc: Exception) -> ApiUnreachable:
    """The error for a request that never got an answer."""
    return ApiUnreachable(
        f"cannot reach {url}: {str(exc) or type(exc).__name__}", name="unreachable"
    )
