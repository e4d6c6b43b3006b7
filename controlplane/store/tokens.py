"""API tokens: stored as SHA-256 hashes with a scope (read < write < admin)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

import asyncpg
from msgspec import Struct

from controlplane.errors import ConflictError, NotFoundError
from controlplane.store.pool import Executor

SCOPES = ("read", "write", "admin")


class TokenInfo(Struct, kw_only=True):
    name: str
    scope: str
    created_at: datetime


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "cp_" + secrets.token_urlsafe(32)


async def create_token(db: Executor, name: str, scope: str) -> str:
    """Create a token and return it; only its hash is stored, so this is the one time it is seen."""
    token = new_token()
    try:
        await db.execute(
            "INSERT INTO tokens (name, scope, token_hash) VALUES ($1, $2, $3)",
            name,
            scope,
            hash_token(token),
        )
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"token {name} already exists", details={"name": name}) from None
    return token


async def find_token(db: Executor, token: str) -> TokenInfo | None:
    record = await db.fetchrow(
        "SELECT name, scope, created_at FROM tokens WHERE token_hash = $1", hash_token(token)
    )
    return None if record is None else TokenInfo(**dict(record.items()))


async def list_tokens(db: Executor) -> list[TokenInfo]:
    records = await db.fetch("SELECT name, scope, created_at FROM tokens ORDER BY name")
    return [TokenInfo(**dict(r.items())) for r in records]


async def revoke_token(db: Executor, name: str) -> None:
    result = await db.execute("DELETE FROM tokens WHERE name = $1", name)
    if result.endswith(" 0"):
        raise NotFoundError(f"token {name} not found", details={"name": name})


async def has_token(db: Executor, name: str) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM tokens WHERE name = $1", name))


async def scope_of(db: Executor, name: str) -> str | None:
    """The scope of token `name` (None when there is none by that name)."""
    scope = await db.fetchval("SELECT scope FROM tokens WHERE name = $1", name)
    return None if scope is None else str(scope)
