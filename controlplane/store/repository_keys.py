"""Cipher passphrases of encrypted repositories, generated once and kept encrypted."""

from __future__ import annotations

import secrets

from controlplane.spec.secrets import SecretBox
from controlplane.store.pool import Executor


async def cipher_pass(db: Executor, box: SecretBox, database_id: str, repository_id: str) -> str:
    """The passphrase of a repository, created on first use (concurrent callers agree)."""
    await db.execute(
        "INSERT INTO repository_keys (database_id, repository_id, cipher_pass)"
        " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        database_id,
        repository_id,
        box.encrypt({"cipher_pass": secrets.token_urlsafe(48)}),
    )
    stored = await db.fetchval(
        "SELECT cipher_pass FROM repository_keys WHERE database_id = $1 AND repository_id = $2",
        database_id,
        repository_id,
    )
    return box.decrypt(str(stored))["cipher_pass"]


async def known_passes(db: Executor, box: SecretBox, database_id: str) -> list[str]:
    """Every passphrase of a database's repositories (for redacting task logs)."""
    rows = await db.fetch(
        "SELECT cipher_pass FROM repository_keys WHERE database_id = $1", database_id
    )
    return [box.decrypt(r["cipher_pass"])["cipher_pass"] for r in rows]
