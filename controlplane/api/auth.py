"""Bearer-token auth: a guard checks the token and the scope a route declares in `opt`."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from controlplane.errors import ForbiddenError, UnauthorizedError
from controlplane.store import tokens

_RANK = {"read": 1, "write": 2, "admin": 3}


async def require_token(connection: ASGIConnection, handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Every route needs a token unless it is marked `public`; `scope` defaults to read."""
    if handler.opt.get("public"):
        return
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("missing bearer token")
    services = connection.app.state.services
    info = await tokens.find_token(services.pool, token.strip())
    if info is None:
        raise UnauthorizedError("invalid token")
    needed = handler.opt.get("scope", "read")
    if _RANK[info.scope] < _RANK[needed]:
        raise ForbiddenError(
            f"token {info.name} has scope {info.scope}; this needs {needed}",
            details={"required_scope": needed},
        )
    connection.state.actor = info.name
