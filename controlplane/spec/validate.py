"""Request validation: parse a JSON body into a spec model, reporting every error at once.

Parsing has two passes. The shape pass (`shape.py`) checks types, bounds and unknown fields
against the msgspec model; only when the shape is right does the semantic pass run, which
checks what a type cannot say (unique names, safe paths, managed options, restore targets) and,
given the installed server's `SettingRules`, whether it would accept each postgresql_conf value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeVar

import msgspec

from controlplane.errors import InvalidInputError, MalformedRequestError
from controlplane.spec.client_auth import check_hba_rules, check_ident_maps
from controlplane.spec.models import (
    BackupRequest,
    DatabaseRequest,
    DatabaseSpec,
    DatabaseUser,
    NodeSpec,
    RestoreRequest,
    VerifyRequest,
)
from controlplane.spec.paths import (
    UNSAFE_TEXT,
    Problem,
    field_path,
    has_control_chars,
    item_path,
    problem,
)
from controlplane.spec.pg_settings import SettingRules
from controlplane.spec.postgresql_conf import check_postgresql_conf
from controlplane.spec.repositories import check_backup_config, check_backup_options
from controlplane.spec.resources import (
    check_postgres_version,
    check_resources,
    check_spock_version,
    major_of,
)
from controlplane.spec.restore_options import check_restore_config
from controlplane.spec.shape import shape_errors, validation_message
from controlplane.spec.unsupported import check_unsupported

T = TypeVar("T", bound=msgspec.Struct)

RESERVED_ANNOTATION = "controlplane_task_id"
ROLE_ATTRIBUTES = frozenset(
    {
        *("SUPERUSER", "NOSUPERUSER", "CREATEDB", "NOCREATEDB", "CREATEROLE", "NOCREATEROLE"),
        *("INHERIT", "NOINHERIT", "LOGIN", "NOLOGIN", "REPLICATION", "NOREPLICATION"),
        *("BYPASSRLS", "NOBYPASSRLS"),
    }
)
# Roles the control plane and PostgreSQL itself rely on.
_RESERVED_USERS = frozenset({"postgres", "controlplane"})
# Databases every cluster has (templates, the maintenance database the control plane connects
# to) and the one a detached subscription names.
RESERVED_DATABASES = frozenset({"template0", "template1", "postgres", "cp_detached"})
# Ports below this are privileged: the OS user that runs Postgres cannot listen on them.
_FIRST_UNPRIVILEGED_PORT = 1024


def parse_request(
    body: bytes | str,
    model: type[T],
    *,
    rules: SettingRules | None = None,
    orchestrator: str | None = None,
) -> T:
    """Decode a JSON body into `model`, raising InvalidInputError with every problem found.

    A body that is not JSON, or not a JSON object, raises MalformedRequestError. `rules` (the
    installed server's settings) make postgresql_conf values checked too; `orchestrator` (its
    name) makes container options checked against what it applies.
    """
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedRequestError(f"request body is not valid json: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedRequestError("request body must be a json object")
    errors = shape_errors(document, model)
    if errors:
        raise InvalidInputError(errors)
    try:
        request = msgspec.convert(document, model)
    except msgspec.ValidationError as exc:  # the shape pass should have caught it already
        raise InvalidInputError([problem(_error_path(exc), validation_message(exc))]) from None
    errors = validate_request(request, rules=rules, orchestrator=orchestrator)
    if errors:
        raise InvalidInputError(errors)
    return request


def parse_database_request(
    body: bytes | str, *, rules: SettingRules | None = None, orchestrator: str | None = None
) -> DatabaseRequest:
    """Parse and validate the body of a database create or update.

    With `rules` (built once at start-up from the installed server, `Services.setting_rules`)
    every postgresql_conf value is checked against the server's own rules; without them only
    the control plane's rules apply and the server's are met when the configuration is applied.
    With `orchestrator` (`local`, `docker`) pgEdge's container options are checked against what
    that orchestrator applies. The request's `tenant_id` is kept in its spec.
    """
    return parse_request(body, DatabaseRequest, rules=rules, orchestrator=orchestrator)


def parse_backup_request(body: bytes | str) -> BackupRequest:
    """Parse and validate the body of a manual node backup."""
    return parse_request(body, BackupRequest)


def parse_verify_request(body: bytes | str) -> VerifyRequest:
    """Parse the body of a verify; an empty body means `{}` (verify every set)."""
    text = body.encode() if isinstance(body, str) else body
    return parse_request(text if text.strip() else b"{}", VerifyRequest)


def parse_restore_request(body: bytes | str) -> RestoreRequest:
    """Parse and validate the body of an in-place restore."""
    return parse_request(body, RestoreRequest)


def validate_request(
    request: msgspec.Struct,
    *,
    rules: SettingRules | None = None,
    orchestrator: str | None = None,
) -> list[Problem]:
    """Semantic problems of an already well-shaped request (paths relative to the body)."""
    if isinstance(request, DatabaseRequest):
        errors = _adopt_tenant(request)
        return errors + validate_database_spec(request.spec, rules=rules, orchestrator=orchestrator)
    if isinstance(request, BackupRequest):
        return validate_backup_request(request)
    if isinstance(request, RestoreRequest):
        return validate_restore_request(request)
    if isinstance(request, VerifyRequest) and request.set is not None and not request.drill:
        return [problem("set", "applies to a restore drill only: set drill to true")]
    return []


def validate_database_spec(
    spec: DatabaseSpec, *, rules: SettingRules | None = None, orchestrator: str | None = None
) -> list[Problem]:
    """Semantic problems of a database spec, with paths prefixed `spec.`.

    `orchestrator` (its name) also checks container options against what it applies.
    """
    errors = _check_database_name(spec.database_name)
    errors += _check_nodes(spec)
    errors += _check_ports(spec)
    errors += _check_users(spec.database_users, "spec.database_users")
    errors += check_postgresql_conf(spec.postgresql_conf, "spec.postgresql_conf", rules)
    errors += check_postgres_version(spec.postgres_version, "spec.postgres_version")
    if spec.spock_version is not None:
        errors += check_spock_version(spec.spock_version, "spec.spock_version")
    errors += check_hba_rules(spec.pg_hba_conf, "spec.pg_hba_conf")
    errors += check_ident_maps(spec.pg_ident_conf, "spec.pg_ident_conf")
    errors += check_resources(spec, orchestrator)
    errors += check_unsupported(spec)
    if spec.backup_config is not None:
        errors += check_backup_config(spec.backup_config, "spec.backup_config")
    if spec.restore_config is not None:
        errors += check_restore_config(spec.restore_config, "spec.restore_config")
    for index, node in enumerate(spec.nodes):
        node_path = item_path("spec.nodes", index)
        errors += _check_node_fields(spec, node, node_path, rules)
        if node.backup_config is not None:
            errors += check_backup_config(node.backup_config, f"{node_path}.backup_config")
        if node.restore_config is not None:
            errors += check_restore_config(node.restore_config, f"{node_path}.restore_config")
    return errors


def _adopt_tenant(request: DatabaseRequest) -> list[Problem]:
    """pgEdge sends `tenant_id` beside `spec`; it is stored in the spec (as pgEdge does)."""
    wrapper, inner = request.tenant_id, request.spec.tenant_id
    if wrapper is not None and inner is not None and wrapper != inner:
        return [problem("tenant_id", f"differs from spec.tenant_id ({inner})")]
    request.spec.tenant_id = wrapper or inner
    return []


def _check_node_fields(
    spec: DatabaseSpec, node: NodeSpec, path: str, rules: SettingRules | None
) -> list[Problem]:
    """A node's own postgres_version, postgresql_conf, pg_hba_conf and pg_ident_conf."""
    errors: list[Problem] = []
    if node.postgres_version is not None:
        version_path = f"{path}.postgres_version"
        errors += check_postgres_version(node.postgres_version, version_path)
        if not errors and major_of(node.postgres_version) != major_of(spec.postgres_version):
            message = (
                f"a node runs the database's PostgreSQL major ({major_of(spec.postgres_version)})"
            )
            errors.append(problem(version_path, message))
    errors += check_postgresql_conf(node.postgresql_conf, f"{path}.postgresql_conf", rules)
    errors += check_hba_rules(node.pg_hba_conf, f"{path}.pg_hba_conf")
    errors += check_ident_maps(node.pg_ident_conf, f"{path}.pg_ident_conf")
    return errors


def validate_backup_request(request: BackupRequest) -> list[Problem]:
    """Semantic problems of a manual backup request (its annotations and backup_options)."""
    errors = check_backup_options(request.backup_options, "backup_options")
    for key, value in request.annotations.items():
        path = field_path("annotations", key)
        if key == RESERVED_ANNOTATION:
            errors.append(problem(path, f"annotation {key} is reserved for the control plane"))
        elif has_control_chars(value):
            errors.append(problem(path, UNSAFE_TEXT))
    return errors


def validate_restore_request(request: RestoreRequest) -> list[Problem]:
    """Semantic problems of an in-place restore request."""
    errors = check_restore_config(request.restore_config, "restore_config")
    errors += _check_unique(request.target_nodes, "target_nodes", "node")
    return errors


def _error_path(exc: msgspec.ValidationError) -> str:
    match = re.search(r" - at `\$\.?([^`]*)`$", str(exc))
    return match.group(1) if match else ""


def _check_unique(values: Sequence[str], path: str, noun: str) -> list[Problem]:
    errors: list[Problem] = []
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            also = item_path(path.rsplit(".", 1)[-1], first[value])
            message = f"duplicate {noun} {value} (also {also})"
            errors.append(problem(item_path(path, index), message))
        else:
            first[value] = index
    return errors


def _check_nodes(spec: DatabaseSpec) -> list[Problem]:
    names = [node.name for node in spec.nodes]
    errors = [
        problem(f"{error['path']}.name", error["message"])
        for error in _check_unique(names, "spec.nodes", "node name")
    ]
    for index, node in enumerate(spec.nodes):
        for k, host in enumerate(node.host_ids):
            if host in node.host_ids[:k]:
                message = (
                    f"host {host} is named twice: a node has one instance per host (the first"
                    " runs its primary, each other one a streaming replica)"
                )
                errors.append(problem(f"{item_path('spec.nodes', index)}.host_ids[{k}]", message))
        path = f"{item_path('spec.nodes', index)}.source_node"
        if node.source_node is None:
            continue
        if node.source_node == node.name:
            errors.append(problem(path, f"node {node.name} cannot be its own source_node"))
        elif node.source_node not in names:
            errors.append(problem(path, f"node {node.source_node} is not a node of this spec"))
        if node.restore_config is not None:
            message = (
                "source_node and restore_config are exclusive: a node is populated either "
                "from another node or from a backup"
            )
            errors.append(problem(path, message))
    return errors


def _check_database_name(name: str) -> list[Problem]:
    if name in RESERVED_DATABASES:
        message = (
            f"database name {name} is reserved (PostgreSQL's templates and maintenance "
            "database, or a name the control plane uses itself)"
        )
        return [problem("spec.database_name", message)]
    return []


def _check_ports(spec: DatabaseSpec) -> list[Problem]:
    # A port needs only be unique on its host, and which host a node without host_ids goes on
    # is the orchestrator's to say: `check_host_ports` runs where the hosts are known.
    errors = _privileged_port(spec.port, "spec.port")
    for index, node in enumerate(spec.nodes):
        if node.port is not None:
            errors += _privileged_port(node.port, f"{item_path('spec.nodes', index)}.port")
    return errors


def node_host(node: NodeSpec, default_host: str) -> str:
    """The host a node goes on: its first host id, else the orchestrator's default host."""
    return node.host_ids[0] if node.host_ids else default_host


def node_port(spec: DatabaseSpec, node: NodeSpec) -> int:
    """The port a node is placed on: its own unless 0 or unset, else the database's; 0 lets
    the orchestrator pick a free one."""
    return node.port or spec.port


def check_host_ports(
    spec: DatabaseSpec,
    hosts: Mapping[str, str],
    *,
    placed: Mapping[str, tuple[str, int]],
    taken: Collection[tuple[str, int]],
    address_of: Callable[[str], str],
    is_free: Callable[[str, int], bool],
) -> list[Problem]:
    """Fixed ports that would clash on their host, each reported at the field giving the port.

    A port must be unique per host, not globally (as in pgEdge). `hosts` gives each node's
    host (nodes on an unknown host are left out); `placed` the (host, port) of the nodes that
    already have an instance: they keep it, so they claim their port first. A new node's fixed
    port is refused when another node of the spec has it on the same host, when it is in
    `taken` (the (address, port) of every recorded instance) or when `is_free(host, port)`
    says something listens there. Hosts are compared by `address_of`: hosts with one
    address (containers on one machine's host network) share their ports.
    """
    claims: dict[tuple[str, int], tuple[str, str]] = {}
    for name, (placed_host, placed_port) in placed.items():
        claims.setdefault((address_of(placed_host), placed_port), (name, placed_host))
    errors: list[Problem] = []
    for index, node in enumerate(spec.nodes):
        port, host = node_port(spec, node), hosts.get(node.name)
        if node.name in placed or not port or host is None:
            continue
        key = (address_of(host), port)
        clash = claims.get(key)
        if clash is not None:
            where = f"on host {clash[1]}"
            if clash[1] != host:
                where += f", which shares address {key[0]} with host {host}"
            reason = f"also used by node {clash[0]} {where}"
        elif key in taken or not is_free(host, port):
            reason = f"already in use on host {host}"
        else:
            claims[key] = (node.name, host)
            continue
        if node.port:
            errors.append(
                problem(f"{item_path('spec.nodes', index)}.port", f"port {port} is {reason}")
            )
        else:
            message = f"port {port}, inherited by node {node.name}, is {reason}"
            if clash is not None:
                message += ": set a port per node or use 0"
            errors.append(problem("spec.port", message))
    return errors


def _privileged_port(port: int, path: str) -> list[Problem]:
    if 0 < port < _FIRST_UNPRIVILEGED_PORT:
        message = (
            f"port {port} is privileged: Postgres runs as an unprivileged OS user and cannot "
            f"listen on it (use 0 to pick one, or {_FIRST_UNPRIVILEGED_PORT}-65535)"
        )
        return [problem(path, message)]
    return []


def _check_users(users: Sequence[DatabaseUser], path: str) -> list[Problem]:
    errors = [
        problem(f"{error['path']}.username", error["message"])
        for error in _check_unique([user.username for user in users], path, "username")
    ]
    owner: str | None = None
    for index, user in enumerate(users):
        user_path = item_path(path, index)
        name = user.username
        if name in _RESERVED_USERS or name.startswith("pg_"):
            errors.append(problem(f"{user_path}.username", f"username {name} is reserved"))
        if user.db_owner and owner is not None:
            message = f"only one user may be db_owner (already {owner})"
            errors.append(problem(f"{user_path}.db_owner", message))
        elif user.db_owner:
            owner = name
        errors += _check_attributes(user.attributes, f"{user_path}.attributes")
    return errors


def _check_attributes(attributes: Sequence[str], path: str) -> list[Problem]:
    errors: list[Problem] = []
    for index, attribute in enumerate(attributes):
        if attribute not in ROLE_ATTRIBUTES:
            message = f"unknown role attribute {attribute!r} (expected e.g. LOGIN or NOLOGIN)"
            errors.append(problem(item_path(path, index), message))
            continue
        opposite = attribute[2:] if attribute.startswith("NO") else f"NO{attribute}"
        if opposite in attributes[:index]:
            message = f"attribute {attribute} contradicts {opposite}"
            errors.append(problem(item_path(path, index), message))
    return errors
