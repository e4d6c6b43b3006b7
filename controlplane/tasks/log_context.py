"""Which task a server log record belongs to: context variables the worker sets around a task
attempt, read by the server log's formatters (`api/log_lines.py`)."""

from __future__ import annotations

from contextvars import ContextVar

# Context variables are looked up by identity, so they are created once, here; their values
# live in each asyncio task's own context, never shared between two tasks.
_TASK_ID: ContextVar[str | None] = ContextVar("controlplane_task_id", default=None)
_DATABASE_ID: ContextVar[str | None] = ContextVar("controlplane_database_id", default=None)
_NODE: ContextVar[str | None] = ContextVar("controlplane_node", default=None)


def bind_task(task_id: str, database_id: str, node: str | None) -> None:
    """Mark every record logged from the current asyncio task (and the tasks it starts) as
    belonging to this task, database and node."""
    _TASK_ID.set(task_id)
    _DATABASE_ID.set(database_id)
    _NODE.set(node)


def task_fields() -> dict[str, str]:
    """`task_id`, `database_id` and `node` of the task running here, those that apply."""
    found = {"task_id": _TASK_ID.get(), "database_id": _DATABASE_ID.get(), "node": _NODE.get()}
    return {key: value for key, value in found.items() if value}
