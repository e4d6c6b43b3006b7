"""Domain error tree: every failure the control plane reports, with a stable snake_case name."""

from __future__ import annotations

from typing import Any


class ControlPlaneError(Exception):
    """Base of every domain error; `name` is the stable identifier clients match on."""

    name = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class NotFoundError(ControlPlaneError):
    name = "not_found"


class InvalidInputError(ControlPlaneError):
    """Client input that fails validation; `details.errors` lists every `{path, message}`."""

    name = "invalid_input"

    def __init__(self, errors: list[dict[str, str]], message: str | None = None) -> None:
        self.errors = errors
        summary = message or "; ".join(f"{e['path']}: {e['message']}" for e in errors[:5])
        super().__init__(summary or "invalid input", details={"errors": errors})


class MalformedRequestError(ControlPlaneError):
    """A body that is not JSON at all (HTTP 400)."""

    name = "malformed_request"


class UnauthorizedError(ControlPlaneError):
    name = "unauthorized"


class ForbiddenError(ControlPlaneError):
    name = "forbidden"


class RestoreNotAllowedError(ControlPlaneError):
    name = "restore_not_allowed"


class ConflictError(ControlPlaneError):
    name = "conflict"


class DatabaseAlreadyExistsError(ConflictError):
    name = "database_already_exists"


class OperationInProgressError(ConflictError):
    """Another operation holds the database or node; `details.task_id` names it."""

    name = "operation_in_progress"

    def __init__(self, message: str, *, task_id: str) -> None:
        super().__init__(message, details={"task_id": task_id})
        self.task_id = task_id


class DatabaseNotModifiableError(ConflictError):
    name = "database_not_modifiable"


class RestorePointExistsError(ConflictError):
    """A node already has a restore point of that name; `details.name` names it."""

    name = "restore_point_already_exists"


class TaskNotCancelableError(ConflictError):
    name = "task_not_cancelable"


class PreconditionError(ConflictError):
    """What a step needs is missing or not in the state it needs (a node without an instance or
    a backup_config, a backup set gone from the repository, a port taken, an instance running
    that must be stopped). Nothing was run; the message says what is wrong."""

    name = "precondition_failed"


class ChildTaskFailedError(ControlPlaneError):
    """A task this task started and waits for did not complete; the message names it."""

    name = "child_task_failed"


class SettingsRejectedError(ControlPlaneError):
    """Postgres did not take new settings; the node was put back on its previous ones (the
    message says whether it runs on them)."""

    name = "settings_rejected"


class UnsafeRestoreError(ControlPlaneError):
    """A restore could not be shown to have kept every committed write, so it does not say
    `completed`; the message says what to do instead."""

    name = "restore_would_lose_data"


class ExternalCommandError(ControlPlaneError):
    """A subprocess (pg_ctl, pgbackrest, …) failed; message already in words."""

    name = "external_command_failed"

    def __init__(
        self, message: str, *, exit_code: int | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message, details={"exit_code": exit_code} if exit_code is not None else {})
        self.exit_code = exit_code
        self.retryable = retryable


class DependencyError(ControlPlaneError):
    """A dependency reached synchronously (store, engine) failed (HTTP 502)."""

    name = "dependency_failed"


class TaskCanceledError(ControlPlaneError):
    """Raised inside a workflow when a cancel was requested; not an error to report."""

    name = "task_canceled"
