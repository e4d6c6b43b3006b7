"""One place that turns domain errors (and Litestar's own) into `{name, message, details}`."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException

from controlplane.api.log_lines import printable
from controlplane.errors import (
    ChildTaskFailedError,
    ConflictError,
    ControlPlaneError,
    DependencyError,
    ExternalCommandError,
    ForbiddenError,
    InvalidInputError,
    MalformedRequestError,
    NotFoundError,
    RestoreNotAllowedError,
    SettingsRejectedError,
    UnauthorizedError,
    UnsafeRestoreError,
)

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[ControlPlaneError], int], ...] = (
    (NotFoundError, 404),
    (InvalidInputError, 422),
    (MalformedRequestError, 400),
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (RestoreNotAllowedError, 403),
    (ConflictError, 409),
    (ExternalCommandError, 502),
    (ChildTaskFailedError, 502),
    (SettingsRejectedError, 422),
    (UnsafeRestoreError, 409),
    (DependencyError, 502),
)


# A body can hold hundreds of thousands of bad items; the answer names the first ones (no
# client fixing a real spec has more) and counts the rest, rather than echoing megabytes.
MAX_REPORTED_ERRORS = 100


def _body(name: str, message: str, details: dict[str, object] | None = None) -> dict[str, object]:
    return {"name": name, "message": message, "details": details or {}}


def _bounded(details: dict[str, Any]) -> dict[str, Any]:
    errors = details.get("errors")
    if isinstance(errors, list) and len(errors) > MAX_REPORTED_ERRORS:
        omitted = len(errors) - MAX_REPORTED_ERRORS
        return {**details, "errors": errors[:MAX_REPORTED_ERRORS], "omitted_errors": omitted}
    return details


def domain_error(request: Request[Any, Any, Any], exc: ControlPlaneError) -> Response[object]:
    status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
    if status == 500:
        return internal_error(request, exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = _body(exc.name, exc.message, _bounded(exc.details))
    return Response(body, status_code=status, headers=headers)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[object]:
    """Litestar's own errors (unknown route, wrong method, bad query types) in our shape."""
    if isinstance(exc, NotFoundException):
        return Response(_body("not_found", "no such resource"), status_code=404)
    status = exc.status_code
    if status >= 500:
        return internal_error(request, exc)
    name = {
        400: "malformed_request",
        405: "method_not_allowed",
        413: "request_too_large",
        415: "unsupported_media_type",
    }.get(status, "bad_request")
    details = exc.extra if isinstance(exc.extra, dict) else None
    return Response(_body(name, str(exc.detail).lower(), details), status_code=status)


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[object]:
    """Generic message to the client; the traceback only in the server log (the path is the
    client's: escaped, so it cannot start a log line of its own)."""
    path = printable(request.url.path)
    log.error("internal error on %s %s", printable(request.method), path, exc_info=exc)
    return Response(_body("internal_error", "internal error"), status_code=500)
