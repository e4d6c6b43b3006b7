"""Helpers shared by workflows: loading a spec with its secrets, instance refs, settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

from controlplane.orchestrator.base import InstanceRef
from controlplane.spec.models import SECRET_FIELDS, DatabaseSpec, NodeSpec
from controlplane.spec.secrets import join_secrets, secret_values
from controlplane.store import databases, instances, repository_keys
from controlplane.store.databases import DatabaseRow
from controlplane.store.instances import InstanceRow
from controlplane.store.tasks import TaskRow
from controlplane.tasks.context import Services, StepContext

SCRAM_ITERATIONS = 4096


def spec_of(services: Services, row: DatabaseRow) -> DatabaseSpec:
    """The full spec of a stored database, secrets decrypted."""
    secrets = services.secret_box.decrypt(row.secrets) if row.secrets else {}
    return join_secrets(row.spec, secrets)


async def load_spec(ctx: StepContext) -> tuple[DatabaseRow, DatabaseSpec]:
    row = await databases.get_database(ctx.services.pool, ctx.database_id)
    return row, spec_of(ctx.services, row)


async def task_secrets(services: Services, task: TaskRow) -> set[str]:
    """Every secret the task may meet, so its log can redact them: the database's, its
    repositories' passphrases, and those sealed in the task's own input."""
    found: set[str] = set()
    row = await databases.find_database(services.pool, task.database_id)
    if row is not None:
        found |= secret_values(spec_of(services, row))
    found.update(
        await repository_keys.known_passes(services.pool, services.secret_box, task.database_id)
    )
    sealed = unseal(services, task)
    config = sealed.get("restore_config")
    if config:
        found |= {
            str(v)
            for k, v in config.get("repository", {}).items()
            if k in SECRET_FIELDS.get(config["repository"].get("type", ""), ())
        }
    return found


def seal(services: Services, payload: dict[str, Any]) -> dict[str, Any]:
    """Task input carrying secrets (a restore's repository keys), encrypted at rest."""
    return {"sealed": services.secret_box.encrypt({"json": json.dumps(payload)})}


def unseal(services: Services, task: TaskRow) -> dict[str, Any]:
    token = task.input.get("sealed")
    if not token:
        return {}
    data: dict[str, Any] = json.loads(services.secret_box.decrypt(token)["json"])
    return data


def ref_of(row: InstanceRow) -> InstanceRef:
    return InstanceRef(
        instance_id=row.id,
        database_id=row.database_id,
        node_name=row.node_name,
        host_id=row.host_id,
        port=row.port,
    )


async def instance_refs(ctx: StepContext, nodes: list[NodeSpec] | None = None) -> list[InstanceRef]:
    """Refs of the database's recorded instances (restricted to `nodes` when given)."""
    rows = await instances.list_instances(ctx.services.pool, ctx.database_id)
    names = None if nodes is None else {n.name for n in nodes}
    return [ref_of(r) for r in rows if names is None or r.node_name in names]


def quote_conf(value: Any) -> str:
    """A postgresql.conf value: booleans on/off, numbers bare, strings single-quoted."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


async def managed_settings(
    ctx: StepContext, spec: DatabaseSpec, ref: InstanceRef, *, archive_command: str
) -> dict[str, str]:
    """Everything in the instance's managed conf file: ours first, then the user's."""
    orchestrator = ctx.services.orchestrator
    ours: dict[str, Any] = {
        "listen_addresses": "127.0.0.1",
        "port": ref.port,
        "unix_socket_directories": orchestrator.socket_dir(ref),
        "cluster_name": ref.instance_id,
        "wal_level": "logical",
        "max_wal_senders": 20,
        "max_replication_slots": 20,
        "max_worker_processes": 24,
        "track_commit_timestamp": True,
        "shared_preload_libraries": "pglogical",
        "archive_mode": "on",
        "archive_command": archive_command,
        "password_encryption": "scram-sha-256",
    }
    ours.update(await orchestrator.build_settings())
    merged = {**ours, **spec.postgresql_conf}
    return {key: quote_conf(value) for key, value in merged.items()}


def scram_verifier(password: str) -> str:
    """A SCRAM-SHA-256 verifier: Postgres stores it as is, so the plaintext never reaches the
    server (nor a server log line if the statement fails)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
