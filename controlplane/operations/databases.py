"""Operations the API offers: validate, record, enqueue a task, return (never run anything)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import msgspec

from controlplane.errors import (
    DatabaseAlreadyExistsError,
    DatabaseNotModifiableError,
    ForbiddenError,
    InvalidInputError,
)
from controlplane.models import (
    Archiver,
    ConnectionInfo,
    Database,
    Host,
    Instance,
    Subscription,
    Task,
)
from controlplane.nodes import restore_new
from controlplane.nodes.common import ref_of, spec_of
from controlplane.orchestrator.base import InstanceRef
from controlplane.spec import parse_database_request
from controlplane.spec.backup_roots import check_base_paths, repositories_of
from controlplane.spec.models import DatabaseSpec, Repository
from controlplane.spec.resources import check_volume_roots, major_of
from controlplane.spec.secrets import merge_secrets, secrets_to_resend, split_secrets
from controlplane.spec.validate import check_host_ports, node_host, node_port
from controlplane.store import databases, instances, tasks, tokens
from controlplane.store.databases import DatabaseRow
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import Services
from controlplane.tasks.inputs import DatabaseInput
from controlplane.workflows import all_workflows

if TYPE_CHECKING:
    from controlplane.server.instance_facts import ArchiverFacts


def _steps(task_type: str) -> list[str]:
    return all_workflows()[task_type].step_names


async def _check_placement(services: Services, spec: DatabaseSpec, database_id: str) -> None:
    """Hosts must exist, and a fixed port must be unique on its host: among the spec's nodes
    and against every other instance recorded there or anything listening there (a port may
    repeat on different hosts, as in pgEdge). Every problem is reported at once."""
    errors: list[dict[str, str]] = []
    orchestrator = services.orchestrator
    known = {h.id for h in orchestrator.hosts()}
    # Hosts are told apart by the address their instances listen on: docker engines on one
    # machine's host network are one host as far as ports go.
    addresses = {
        host: orchestrator.connection_info(
            InstanceRef(instance_id="", database_id=database_id, node_name="", host_id=host, port=0)
        )[0]
        for host in known
    }
    names = {node.name for node in spec.nodes}
    mine = {
        r.node_name: r
        for r in await instances.list_instances(services.pool, database_id)
        if r.node_name in names
    }
    # Every recorded instance holds its port, whatever its database or role.
    taken = {
        (addresses[host], port)
        for host in known
        for port in await instances.used_ports(services.pool, host)
    }
    hosts: dict[str, str] = {}
    for i, node in enumerate(spec.nodes):
        host = node_host(node, orchestrator.default_host())
        if host in known:
            hosts[node.name] = host
        else:
            errors.append(
                {
                    "path": f"spec.nodes[{i}].host_ids[0]",
                    "message": f"unknown host {host}; the hosts are {', '.join(sorted(known))}"
                    " (GET /v1/hosts)",
                }
            )
        existing, port = mine.get(node.name), node_port(spec, node)
        if existing is not None and port and port != existing.port:
            errors.append(
                {
                    "path": f"spec.nodes[{i}].port",
                    "message": "the port of an existing node cannot be changed",
                }
            )
    errors += check_host_ports(
        spec,
        hosts,
        placed={r.node_name: (r.host_id, r.port) for r in mine.values()},
        taken=taken,
        address_of=lambda host: addresses.get(host, host),
        is_free=orchestrator.port_is_free,
    )
    errors += await _check_replica_hosts(services, spec, database_id, known, taken, addresses)
    if errors:
        raise InvalidInputError(errors)


async def _clustered_changes(
    services: Services, database_id: str, old: DatabaseSpec, new: DatabaseSpec
) -> list[dict[str, str]]:
    """What an update may not change yet while a node has replicas: its backup configuration
    (new repository secrets reach archive-push only with a restart of every member)."""
    rows = await instances.list_instances(services.pool, database_id)
    if not any(r.supervisor == "patroni" for r in rows):
        return []
    errors = []
    if new.backup_config != old.backup_config:
        errors.append(("spec.backup_config", "the backup configuration"))
    before = {n.name: n.backup_config for n in old.nodes}
    for i, node in enumerate(new.nodes):
        if node.name in before and node.backup_config != before[node.name]:
            errors.append((f"spec.nodes[{i}].backup_config", "the backup configuration"))
    return [
        {
            "path": path,
            "message": f"changing {what} of a database whose nodes have replicas is not"
            " supported yet (it would restart a primary under Patroni)",
        }
        for path, what in errors
    ]


async def _check_replica_hosts(
    services: Services,
    spec: DatabaseSpec,
    database_id: str,
    known: set[str],
    taken: set[tuple[str, int]],
    addresses: dict[str, str],
) -> list[dict[str, str]]:
    """A replica's host must exist and have the node's fixed port free. An existing node may
    gain and lose replicas, but not the host its primary runs on now (after a failover that
    may be any of them): a switchover moves the primary first."""
    errors: list[dict[str, str]] = []
    recorded: dict[str, set[str]] = {}
    primaries: dict[str, str] = {}
    for row in await instances.list_instances(services.pool, database_id, replicas=True):
        recorded.setdefault(row.node_name, set()).add(row.host_id)
        if row.role == "primary":
            primaries[row.node_name] = row.host_id
    default = services.orchestrator.default_host()
    for i, node in enumerate(spec.nodes):
        wanted = set(node.host_ids) or {default}
        added = set(node.host_ids[1:])
        if node.name in recorded:
            primary = primaries.get(node.name)
            if primary is not None and primary not in wanted:
                errors.append(
                    {
                        "path": f"spec.nodes[{i}].host_ids",
                        "message": f"host {primary} runs node {node.name}'s primary: keep it,"
                        " or switch the primary over to another host first",
                    }
                )
                continue
            added = wanted - recorded[node.name]
        port = node_port(spec, node)
        for k, host in enumerate(node.host_ids):
            if host not in added:
                continue
            path = f"spec.nodes[{i}].host_ids[{k}]"
            if host not in known:
                errors.append(
                    {
                        "path": path,
                        "message": f"unknown host {host}; the hosts are"
                        f" {', '.join(sorted(known))} (GET /v1/hosts)",
                    }
                )
            elif port and (
                (addresses[host], port) in taken
                or not services.orchestrator.port_is_free(host, port)
            ):
                errors.append(
                    {"path": path, "message": f"port {port} is already in use on host {host}"}
                )
    return errors


# Role attributes that reach beyond the database: only an admin token may grant them.
PRIVILEGED_ATTRIBUTES = ("SUPERUSER", "CREATEROLE", "REPLICATION", "BYPASSRLS")
# Attributes that give a role the instance's OS user (COPY … PROGRAM, pg_read_file; CREATEROLE
# can grant itself pg_execute_server_program on PostgreSQL 15).
_OS_ATTRIBUTES = ("SUPERUSER", "CREATEROLE")


async def _check_privileges(
    services: Services, spec: DatabaseSpec, old: DatabaseSpec | None, actor: str
) -> None:
    """Privileged role attributes need an admin token (only those the request adds: an update
    that keeps an admin's grant is fine at write scope), and none that reaches the OS user on
    the local orchestrator, where every database shares it (unless declared single-tenant)."""
    granted = {(u.username, a) for u in (old.database_users if old else []) for a in u.attributes}
    local = services.settings.orchestrator == "local" and not services.settings.local_superuser
    refused, needs_admin = [], []
    for i, user in enumerate(spec.database_users):
        for j, attribute in enumerate(user.attributes):
            path = f"spec.database_users[{i}].attributes[{j}]"
            if local and attribute in _OS_ATTRIBUTES:
                refused.append(
                    {
                        "path": path,
                        "message": f"{attribute} is refused on the local orchestrator: every "
                        f"database's instances run as one OS user, so it would reach the "
                        f"others' files (use the docker orchestrator, or set "
                        f"CONTROLPLANE_LOCAL_SUPERUSER=true on a single-tenant control plane)",
                    }
                )
            elif attribute in PRIVILEGED_ATTRIBUTES and (user.username, attribute) not in granted:
                needs_admin.append(path)
    if refused:
        raise InvalidInputError(refused)
    if needs_admin and await tokens.scope_of(services.pool, actor) != "admin":
        raise ForbiddenError(
            f"granting {', '.join(PRIVILEGED_ATTRIBUTES)} needs an admin token",
            details={"required_scope": "admin", "paths": needs_admin},
        )


def check_storage(
    services: Services,
    repositories: Iterator[tuple[str, Repository]],
    spec: DatabaseSpec | None = None,
) -> None:
    """Posix repositories (`repositories`: each with its JSON path) and the spec's extra
    volumes only inside the operator's backup roots."""
    settings = services.settings
    roots, data_dir = settings.backup_root_paths, PurePosixPath(settings.data_path)
    errors = check_base_paths(repositories, roots, data_dir)
    if spec is not None:
        errors += check_volume_roots(spec, roots, data_dir)
    if errors:
        raise InvalidInputError(errors)


def _encrypt(services: Services, spec: DatabaseSpec) -> tuple[dict[str, Any], str | None]:
    public, secrets = split_secrets(spec)
    return public, services.secret_box.encrypt(secrets) if secrets else None


async def create_database(services: Services, body: bytes, actor: str) -> tuple[Task, Database]:
    """Record a new database and enqueue its create task."""
    # Off the event loop: a large spec takes a while to check, and lease renewals share it.
    request = await asyncio.to_thread(
        parse_database_request,
        body,
        rules=services.setting_rules,
        orchestrator=services.orchestrator.name,
    )
    database_id = request.id or str(uuid.uuid4())
    check_storage(services, repositories_of(request.spec), request.spec)
    await _check_privileges(services, request.spec, None, actor)
    await _check_placement(services, request.spec, database_id)
    if await databases.find_database(services.pool, database_id) is not None:
        raise DatabaseAlreadyExistsError(
            f"database {database_id} already exists", details={"database_id": database_id}
        )
    plans = await restore_new.plan_new_nodes(
        services, database_id, request.spec, list(request.spec.nodes)
    )
    public, secrets = _encrypt(services, request.spec)
    async with services.pool.acquire() as conn, conn.transaction():
        row = await databases.insert_database(
            conn, database_id=database_id, spec=public, secrets=secrets
        )
        task = await tasks.insert_task(
            conn,
            database_id=database_id,
            type="create",
            steps=_steps("create"),
            actor=actor,
            input=DatabaseInput(restore_plans=plans),
        )
    return await tasks.get_task(services.pool, str(task.task_id)), await database_view_of(
        services, row
    )


def _immutable_changes(old: DatabaseSpec, new: DatabaseSpec) -> list[dict[str, str]]:
    errors = []
    if old.database_name != new.database_name:
        errors.append({"path": "spec.database_name", "message": "cannot be changed after create"})
    # "15" and "15.4" say the same here: the minor is the installed one.
    if major_of(old.postgres_version) != major_of(new.postgres_version):
        message = "the major version cannot be changed after create"
        errors.append({"path": "spec.postgres_version", "message": message})
    if old.tenant_id != new.tenant_id:
        message = f"cannot be changed after create (it is {old.tenant_id or 'unset'})"
        errors.append({"path": "tenant_id", "message": message})
    return errors


async def update_database(
    services: Services, database_id: str, body: bytes, actor: str
) -> tuple[Task, Database]:
    """Store the new desired spec (secrets omitted are kept) and enqueue an update task."""
    # Off the event loop: a large spec takes a while to check, and lease renewals share it.
    request = await asyncio.to_thread(
        parse_database_request,
        body,
        rules=services.setting_rules,
        orchestrator=services.orchestrator.name,
    )
    if request.id is not None and request.id != database_id:
        raise InvalidInputError(
            [{"path": "id", "message": "does not match the database in the URL"}]
        )
    row = await databases.get_database(services.pool, database_id)
    if row.state == "deleting":
        raise DatabaseNotModifiableError(f"database {database_id} is being deleted")
    old = spec_of(services, row)
    new = merge_secrets(request.spec, old)
    errors = _immutable_changes(old, new)
    errors += await _clustered_changes(services, database_id, old, new)
    errors += [{"path": p, "message": m} for p, m in secrets_to_resend(request.spec, old)]
    if errors:
        raise InvalidInputError(errors)
    check_storage(services, repositories_of(new), new)
    await _check_privileges(services, new, old, actor)
    await _check_placement(services, new, database_id)
    existing = {r.node_name for r in await instances.list_instances(services.pool, database_id)}
    plans = await restore_new.plan_new_nodes(
        services, database_id, new, [n for n in new.nodes if n.name not in existing]
    )
    public, secrets = _encrypt(services, new)
    async with services.pool.acquire() as conn, conn.transaction():
        await databases.get_database(conn, database_id, for_update=True)
        task = await tasks.insert_task(
            conn,
            database_id=database_id,
            type="update",
            steps=_steps("update"),
            actor=actor,
            input=DatabaseInput(restore_plans=plans),
        )
        await databases.update_spec(conn, database_id, spec=public, secrets=secrets)
        await databases.set_state(conn, database_id, "modifying", error=row.error)
    row = await databases.get_database(services.pool, database_id)
    return await tasks.get_task(services.pool, str(task.task_id)), await database_view_of(
        services, row
    )


async def delete_database(services: Services, database_id: str, actor: str) -> Task:
    """Enqueue the delete task; the record goes when its instances are gone."""
    async with services.pool.acquire() as conn, conn.transaction():
        await databases.get_database(conn, database_id, for_update=True)
        task = await tasks.insert_task(
            conn, database_id=database_id, type="delete", steps=_steps("delete"), actor=actor
        )
        await databases.set_state(conn, database_id, "deleting")
    return await tasks.get_task(services.pool, str(task.task_id))


def database_view(services: Services, row: DatabaseRow, rows: list[InstanceRow]) -> Database:
    """The API shape: spec with every secret removed, instances with connection info, and
    what the monitor last saw of each (its subscriptions, and when it looked): a read asks the
    store and this server's memory, never an instance."""
    # The stored spec is the public one (secrets live apart, encrypted): nothing to decrypt.
    spec = msgspec.convert(row.spec, DatabaseSpec)
    standbys = {
        standby.name: standby
        for inst in rows
        if (primary := services.facts.get(inst.id)) is not None and primary.role == "primary"
        for standby in primary.standbys
    }
    # Each subscription's lag is its slot's on the provider: the provider node's primary facts.
    slot_lag = {
        (facts.node, slot.name): slot.lag_bytes
        for inst in rows
        if (facts := services.facts.get(inst.id)) is not None and facts.role == "primary"
        for slot in facts.slots
        if slot.lag_bytes is not None
    }
    views = []
    for inst in rows:
        host, port = services.orchestrator.connection_info(ref_of(inst))
        facts = services.facts.get(inst.id)
        role = facts.role if facts is not None and facts.up else inst.role
        streaming = standbys.get(inst.id) if role == "replica" else None
        views.append(
            Instance(
                id=inst.id,
                node_name=inst.node_name,
                host_id=inst.host_id,
                state=inst.state,
                role=role,
                port=inst.port,
                error=inst.error,
                connection_info=ConnectionInfo(host=host, port=port, database=spec.database_name),
                subscriptions=[
                    Subscription(
                        provider_node=s.provider,
                        name=s.name,
                        status=s.status,
                        lag_bytes=_int_or_none(slot_lag.get((s.provider, s.slot_name))),
                    )
                    for s in (facts.subscriptions or [] if facts else [])
                ],
                observed_at=(
                    datetime.fromtimestamp(facts.observed_at, UTC) if facts is not None else None
                ),
                timeline=facts.timeline if facts is not None else None,
                lag_bytes=int(streaming.lag_bytes) if streaming is not None else None,
                lag_seconds=streaming.lag_seconds if streaming is not None else None,
                archiver=_archiver_view(facts.archiver) if facts is not None else None,
            )
        )
    return Database(
        id=row.id,
        state=row.state,
        created_at=row.created_at,
        updated_at=row.updated_at,
        spec=msgspec.to_builtins(spec),
        tenant_id=spec.tenant_id,
        error=row.error,
        instances=views,
    )


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def _archiver_view(facts: ArchiverFacts | None) -> Archiver | None:
    if facts is None:
        return None
    return Archiver(
        archived_count=facts.archived_count,
        failed_count=facts.failed_count,
        last_archived_at=facts.last_archived_time,
        last_failed_at=facts.last_failed_time,
        last_failed_wal=facts.last_failed_wal,
        ready_files=facts.ready_files,
    )


async def database_view_of(services: Services, row: DatabaseRow) -> Database:
    rows = await instances.list_instances(services.pool, row.id, replicas=True)
    return database_view(services, row, rows)


async def get_database(services: Services, database_id: str) -> Database:
    return await database_view_of(
        services, await databases.get_database(services.pool, database_id)
    )


async def list_databases(services: Services) -> list[Database]:
    """Every database: two queries, whatever their number."""
    rows = await databases.list_databases(services.pool)
    by_database: dict[str, list[InstanceRow]] = {}
    for inst in await instances.list_instances(services.pool, replicas=True):
        by_database.setdefault(inst.database_id, []).append(inst)
    return [database_view(services, row, by_database.get(row.id, [])) for row in rows]


async def list_hosts(services: Services) -> list[Host]:
    """The orchestrator's hosts, each with the number of instances placed on it."""
    counts = await instances.count_by_host(services.pool)
    return [
        msgspec.structs.replace(host, instances=counts.get(host.id, 0))
        for host in services.orchestrator.hosts()
    ]
