"""Path parameters: every one is checked against its pattern before a handler, the store or a
log sees it (one guard for every route)."""

from __future__ import annotations

import re
from typing import Any, get_args

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from msgspec import Meta

from controlplane.errors import NotFoundError
from controlplane.spec.models import Identifier, NodeName


def _spec_pattern(annotated: Any) -> tuple[re.Pattern[str], int]:
    """The pattern and maximum length the spec gives a name (one source of truth)."""
    meta = next(m for m in get_args(annotated) if isinstance(m, Meta))
    assert meta.pattern is not None and meta.max_length is not None
    return re.compile(meta.pattern), meta.max_length


_HEX = "[0-9A-Fa-f]"
# name -> (pattern, longest value, what a valid one looks like). Patterns are matched with
# fullmatch on values already bounded in length, so no input makes them slow.
_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "database_id": (
        *_spec_pattern(Identifier),
        "lowercase letters and digits in words joined by single hyphens, at most 36",
    ),
    "node": (*_spec_pattern(NodeName), "n followed by digits, e.g. n1"),
    "task_id": (
        re.compile(f"{_HEX}{{8}}-?{_HEX}{{4}}-?{_HEX}{{4}}-?{_HEX}{{4}}-?{_HEX}{{12}}"),
        36,
        "a task id (uuid)",
    ),
    # pgBackRest labels: 20250505-020001F, or 20250505-020001F_20250506-020001I for diff/incr.
    "label": (
        re.compile(r"[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?"),
        33,
        "a backup label such as 20250505-020001F",
    ),
}
# Any parameter a future route adds without a rule of its own.
_DEFAULT_RULE = (
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*"),
    128,
    "letters, digits, '_', '.' or '-'",
)


def invalid_path_params(params: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, what it should look like) of every path parameter that breaks its rule."""
    bad = []
    for name, value in params.items():
        pattern, longest, rule = _RULES.get(name, _DEFAULT_RULE)
        text = str(value)
        if len(text) > longest or pattern.fullmatch(text) is None:
            bad.append((name, rule))
    return bad


async def check_path_params(connection: ASGIConnection, handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """404 `not_found` for a path parameter no resource can have (NUL, newline, `../`, …):
    nothing by that name can exist, and the value goes no further."""
    bad = invalid_path_params(connection.path_params)
    if bad:
        name, rule = bad[0]
        raise NotFoundError(
            f"no such resource: {name} must be {rule}",
            details={"parameter": name},
        )
