"""Helpers shared by workflows: loading a spec with its secrets, instance refs, settings."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from controlplane.errors import ExternalCommandError, SettingsRejectedError
from controlplane.orchestrator.base import InstanceRef, reload_settings
from controlplane.spec.models import SECRET_FIELDS, DatabaseSpec, NodeSpec, node_postgresql_conf
from controlplane.spec.postgresql_conf import MESH_MINIMUMS, quote_conf
from controlplane.spec.resources import container_options
from controlplane.spec.secrets import join_secrets, secret_values
from controlplane.store import databases, instances, repository_keys
from controlplane.store.databases import DatabaseRow
from controlplane.store.instances import InstanceRow
from controlplane.store.tasks import TaskRow
from controlplane.tasks.context import Services, StepContext

# The configuration a node ran on before a task rewrote it (instance dir, private).
PREVIOUS_SETTINGS_FILE = "postgresql.previous.json"
# Lines the orchestrator itself appends to the file we write (docker: hba and ident paths).
_ORCHESTRATOR_PLACED = frozenset({"hba_file", "ident_file"})
# The settings of the file we write, as the running server reads it now: the file that sets
# cluster_name (always ours), not postgresql.auto.conf should ALTER SYSTEM have set it too.
_OUR_FILE_SETTINGS = """
WITH ours AS (
    SELECT sourcefile FROM pg_file_settings
    WHERE name = 'cluster_name' AND sourcefile NOT LIKE '%/postgresql.auto.conf'
    ORDER BY seqno DESC LIMIT 1)
SELECT name, setting FROM pg_file_settings
WHERE sourcefile = (SELECT sourcefile FROM ours) AND name IS NOT NULL AND setting IS NOT NULL
ORDER BY seqno
"""
# What the configuration files hold that the server could not apply (a pending restart is
# not an error: the value is valid and waits for the restart).
_FILE_ERRORS = """
SELECT f.sourcefile, f.sourceline, f.name, f.setting, f.error
FROM pg_file_settings f LEFT JOIN pg_settings s ON lower(s.name) = lower(f.name)
WHERE f.error IS NOT NULL AND NOT coalesce(s.pending_restart, false)
ORDER BY f.seqno
"""
# SQLSTATE 55P02: the setting cannot be changed now (postmaster or sighup context).
_CANT_CHANGE_NOW = "55P02"


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


def ref_of(row: InstanceRow, spec: DatabaseSpec | None = None) -> InstanceRef:
    """The instance's ref; with `spec`, carrying its node's container options (which the
    orchestrator records, so that refs made without the spec get them too)."""
    node = None if spec is None else next((n for n in spec.nodes if n.name == row.node_name), None)
    return InstanceRef(
        instance_id=row.id,
        database_id=row.database_id,
        node_name=row.node_name,
        host_id=row.host_id,
        port=row.port,
        supervisor=row.supervisor,
        container=None if spec is None or node is None else container_options(spec, node),
    )


async def instance_refs(
    ctx: StepContext, nodes: list[NodeSpec] | None = None, spec: DatabaseSpec | None = None
) -> list[InstanceRef]:
    """Refs of the database's recorded instances (restricted to `nodes` when given; with their
    container options when `spec` is given)."""
    rows = await instances.list_instances(ctx.services.pool, ctx.database_id)
    names = None if nodes is None else {n.name for n in nodes}
    return [ref_of(r, spec) for r in rows if names is None or r.node_name in names]


async def managed_settings(
    ctx: StepContext, spec: DatabaseSpec, ref: InstanceRef, *, archive_command: str
) -> dict[str, str]:
    """Everything in the instance's managed conf file: ours first, then the user's."""
    orchestrator = ctx.services.orchestrator
    # The instance listens only on the address clients are given: its host's own (each local
    # named host has one), so instances on other hosts may use the same port.
    address, _ = orchestrator.connection_info(ref)
    ours: dict[str, Any] = {
        "listen_addresses": address,
        "port": ref.port,
        "unix_socket_directories": orchestrator.socket_dir(ref),
        "cluster_name": ref.instance_id,
        "wal_level": "logical",
        **MESH_MINIMUMS,
        "track_commit_timestamp": True,
        "shared_preload_libraries": "pglogical",
        "archive_mode": "on",
        "archive_command": archive_command,
        "password_encryption": "scram-sha-256",
    }
    ours.update(await orchestrator.build_settings())
    node = next((n for n in spec.nodes if n.name == ref.node_name), None)
    merged = {
        **ours,
        **(spec.postgresql_conf if node is None else node_postgresql_conf(spec, node)),
    }
    return {key: quote_conf(value) for key, value in merged.items()}


async def keep_previous_settings(ctx: StepContext, ref: InstanceRef) -> None:
    """Before this task rewrites a running node's configuration, keep what its file holds now
    (as the server reads it back), tagged with the task: a setting that then fails to apply is
    undone by writing this back. Kept once per task, so a step re-run after a crash never
    takes the new configuration for the old one."""
    orchestrator = ctx.services.orchestrator
    if await previous_settings(ctx, ref) is not None:
        return
    if await orchestrator.status(ref) != "running":
        return
    try:
        conn = await orchestrator.connect(ref)
    except (OSError, asyncpg.PostgresError):
        return
    try:
        rows = await conn.fetch(_OUR_FILE_SETTINGS)
    finally:
        await conn.close()
    settings = {
        str(r["name"]): quote_conf(str(r["setting"]))
        for r in rows
        if r["name"] not in _ORCHESTRATOR_PLACED
    }
    if settings:
        record = {"task_id": str(ctx.task.task_id), "settings": settings}
        await orchestrator.write_file(ref, PREVIOUS_SETTINGS_FILE, json.dumps(record))


async def previous_settings(ctx: StepContext, ref: InstanceRef) -> dict[str, str] | None:
    """The configuration this task found the node running on, or None (none kept)."""
    text = await ctx.services.orchestrator.read_file(ref, PREVIOUS_SETTINGS_FILE)
    if not text:
        return None
    record = json.loads(text)
    if record.get("task_id") != str(ctx.task.task_id):
        return None
    return {str(k): str(v) for k, v in record["settings"].items()}


async def setting_errors(conn: asyncpg.Connection) -> list[str]:
    """What the node's configuration files hold that the server refuses, in words: each
    setting with the server's own reason when it gives one (asked by trying it on this
    session), else the file and line."""
    found = []
    for row in await conn.fetch(_FILE_ERRORS):
        name, setting = row["name"], row["setting"]
        if name is None:
            found.append(f"{row['sourcefile']} line {row['sourceline']}: {row['error']}")
            continue
        reason = await _server_reason(conn, name, setting) or str(row["error"])
        found.append(f"{name} = {setting!r} ({reason})")
    return found


async def _server_reason(conn: asyncpg.Connection, name: str, setting: str) -> str | None:
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config($1, $2, true)", name, setting)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == _CANT_CHANGE_NOW:
            return None
        return str(exc)
    return None


async def put_back_previous_settings(
    ctx: StepContext, ref: InstanceRef, what: str, *, restart: bool
) -> None:
    """Write back the configuration the node ran on before this task and apply it (reload,
    or start the stopped node), then fail the task saying `what` went wrong."""
    orchestrator = ctx.services.orchestrator
    subject = f"node {ref.node_name} of {ctx.database_id}"
    previous = await previous_settings(ctx, ref)
    if previous is None:
        raise SettingsRejectedError(
            f"{subject} {what}; no earlier configuration of this task to put back"
        )
    await ctx.log.warning(f"{subject} {what}: putting its previous configuration back")
    await orchestrator.write_postgresql_conf(ref, previous)
    sink = ctx.log.sink("pg_ctl", node=ref.node_name)
    try:
        if restart:
            await orchestrator.start(ref, on_line=sink)
        else:
            await reload_settings(orchestrator, ref)
    except ExternalCommandError as exc:
        raise SettingsRejectedError(
            f"{subject} {what}; its previous configuration was put back but the node did not "
            f"start on it either: {exc.message}"
        ) from None
    raise SettingsRejectedError(
        f"{subject} {what}; its previous configuration was put back and the node runs on it"
    )
