"""Bearer-token auth: a guard checks the token and the scope a route declares in `opt`."""

from __future__ import annotations

import time

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from controlplane.errors import ForbiddenError, UnauthorizedError
from controlplane.store import tokens
from controlplane.store.tokens import TokenInfo

_RANK = {"read": 1, "write": 2, "admin": 3}
# A valid token is trusted this long without asking the store again: a dashboard polling many
# read routes costs one store query per route, not two. A revoked token stops working within it.
TOKEN_CACHE_SECONDS = 2.0
_CACHE_LIMIT = 1024


class TokenCache:
    """Valid tokens seen in the last TOKEN_CACHE_SECONDS, by hash (never the token itself)."""

    def __init__(self) -> None:
        self._found: dict[str, tuple[TokenInfo, float]] = {}

    def get(self, key: str) -> TokenInfo | None:
        hit = self._found.get(key)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, key: str, info: TokenInfo) -> None:
        if len(self._found) >= _CACHE_LIMIT:
            now = time.monotonic()
            self._found = {k: v for k, v in self._found.items() if v[1] >= now}
            if len(self._found) >= _CACHE_LIMIT:
                self._found.clear()
        self._found[key] = (info, time.monotonic() + TOKEN_CACHE_SECONDS)


async def require_token(connection: ASGIConnection, handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Every route needs a token unless it is marked `public`; `scope` defaults to read."""
    if handler.opt.get("public"):
        return
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("missing bearer token")
    services = connection.app.state.services
    cache: TokenCache = connection.app.state.token_cache
    key = tokens.hash_token(token.strip())
    info = cache.get(key)
    if info is None:
        info = await tokens.find_token(services.pool, token.strip())
        if info is None:
            raise UnauthorizedError("invalid token")
        cache.put(key, info)
    needed = handler.opt.get("scope", "read")
    if _RANK[info.scope] < _RANK[needed]:
        raise ForbiddenError(
            f"token {info.name} has scope {info.scope}; this needs {needed}",
            details={"required_scope": needed},
        )
    connection.state.actor = info.name
