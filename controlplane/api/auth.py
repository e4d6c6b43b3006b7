"""Token auth: a guard checks the token and the scope a route declares in `opt`.

The token comes in an `Authorization: Bearer` header or, for the dashboard, in the session
cookie its login form sets. The cookie is accepted on GET and HEAD only and reads only: a page
of another site can make a browser send it, so it must never be able to change anything."""

from __future__ import annotations

import time

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from controlplane.errors import ForbiddenError, UnauthorizedError
from controlplane.store import tokens
from controlplane.store.tokens import TokenInfo

_RANK = {"read": 1, "write": 2, "admin": 3}
# The dashboard's session cookie (HttpOnly, SameSite=Strict): the token itself, never in a URL.
SESSION_COOKIE = "cp_token"
_COOKIE_METHODS = frozenset({"GET", "HEAD"})
# Longer than any token `token create` prints; a longer one is not looked up at all.
MAX_TOKEN_CHARS = 512
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


def _credential(connection: ASGIConnection) -> tuple[str, bool]:  # type: ignore[type-arg]
    """The token a request carries and whether it came from the session cookie."""
    header = connection.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("missing bearer token")
        return token.strip(), False
    cookie = connection.cookies.get(SESSION_COOKIE, "").strip()
    if cookie and connection.scope.get("method") in _COOKIE_METHODS:
        return cookie, True
    raise UnauthorizedError("missing bearer token")


async def find_valid_token(connection: ASGIConnection, token: str) -> TokenInfo | None:  # type: ignore[type-arg]
    """The stored token `token` is, through the cache of recently seen ones; None if none."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    cache: TokenCache = connection.app.state.token_cache
    key = tokens.hash_token(token)
    info = cache.get(key)
    if info is None:
        info = await tokens.find_token(connection.app.state.services.pool, token)
        if info is None:
            return None
        cache.put(key, info)
    return info


async def require_token(connection: ASGIConnection, handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Every route needs a token unless it is marked `public`; `scope` defaults to read. A
    token from the session cookie has read scope, whatever scope it was created with."""
    if handler.opt.get("public"):
        return
    token, from_cookie = _credential(connection)
    info = await find_valid_token(connection, token)
    if info is None:
        raise UnauthorizedError("invalid token")
    scope = "read" if from_cookie else info.scope
    needed = handler.opt.get("scope", "read")
    if _RANK[scope] < _RANK[needed]:
        held = "a dashboard session" if from_cookie else f"scope {info.scope}"
        raise ForbiddenError(
            f"token {info.name} has {held}; this needs {needed}",
            details={"required_scope": needed},
        )
    connection.state.actor = info.name
