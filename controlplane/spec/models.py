"""Declarative database spec: the msgspec models a user submits (desired state)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

from controlplane.models import BackupType as BackupType  # re-exported: spec users name it here
from controlplane.models import ScheduleType as ScheduleType

# Patterns end in `$(?!\n)`: msgspec matches with Python's `re`, whose `$` also matches before a
# final newline, so `^n[0-9]+$` alone would accept "n1\n" (a name that then lands in paths and
# config files). The lookahead is a no-op for JSON-schema (ECMA) readers of the OpenAPI spec.
# Database and host ids: lowercase words joined by single hyphens (DESIGN §4: no "--").
Identifier = Annotated[
    str, Meta(min_length=1, max_length=36, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$(?!\n)")
]
NodeName = Annotated[str, Meta(min_length=2, max_length=8, pattern=r"^n[0-9]+$(?!\n)")]
RepositoryId = Annotated[
    str, Meta(min_length=1, max_length=36, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$(?!\n)")
]
PgName = Annotated[str, Meta(min_length=1, max_length=63, pattern=r"^[a-z_][a-z0-9_]*$(?!\n)")]
Port = Annotated[int, Meta(ge=0, le=65535)]
ShortText = Annotated[str, Meta(max_length=1024)]
Secret = Annotated[str, Meta(min_length=1, max_length=4096)]


class _Request(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every model a client submits: unknown fields are rejected."""


class _RepositoryBase(_Request, kw_only=True, tag_field="type"):
    id: RepositoryId | None = None
    base_path: ShortText | None = None
    # pgEdge's defaults: keep the full backups of the last 7 days (and the backups and WAL
    # they need); `"retention_full_type": "count"` keeps the last N full backups instead.
    retention_full: Annotated[int, Meta(ge=1, le=9999)] = 7
    retention_full_type: Literal["count", "time"] = "time"
    retention_diff: Annotated[int, Meta(ge=1, le=9999)] | None = None
    storage_port: Annotated[int, Meta(ge=1, le=65535)] | None = None
    storage_ca_file: ShortText | None = None
    storage_verify_tls: bool | None = None
    cipher: bool = False
    custom_options: Annotated[dict[str, ShortText], Meta(max_length=64)] = field(
        default_factory=dict
    )


class PosixRepository(_RepositoryBase, kw_only=True, tag="posix"):
    """A directory on the instance's host (or a mounted share); `base_path` is required."""


class CifsRepository(_RepositoryBase, kw_only=True, tag="cifs"):
    """A mounted CIFS/SMB share: a posix repository whose file system has no links and no
    directory fsync (pgBackRest's `cifs` type); `base_path` is required."""


class S3Repository(_RepositoryBase, kw_only=True, tag="s3"):
    s3_bucket: Annotated[str, Meta(min_length=3, max_length=63)]
    # Optional as in pgEdge: without it the bucket is addressed in us-east-1 through
    # s3.amazonaws.com, which answers for every region.
    s3_region: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    s3_endpoint: ShortText | None = None
    s3_key: Secret | None = None
    s3_key_secret: Secret | None = None
    s3_uri_style: Literal["host", "path"] | None = None


class GcsRepository(_RepositoryBase, kw_only=True, tag="gcs"):
    gcs_bucket: Annotated[str, Meta(min_length=3, max_length=222)]
    gcs_endpoint: ShortText | None = None
    gcs_key_type: Literal["service", "token", "auto"] | None = None
    gcs_key: Secret | None = None


class AzureRepository(_RepositoryBase, kw_only=True, tag="azure"):
    azure_account: Annotated[str, Meta(min_length=1, max_length=64)]
    azure_container: Annotated[str, Meta(min_length=1, max_length=63)]
    azure_endpoint: ShortText | None = None
    azure_key: Secret | None = None
    azure_uri_style: Literal["host", "path"] | None = None


Repository = PosixRepository | CifsRepository | S3Repository | GcsRepository | AzureRepository
# Repository types that are a directory on the instance's host (bind-mounted into containers).
FILESYSTEM_TYPES = frozenset({"posix", "cifs"})

# Write-only fields per repository type: never returned, kept when omitted on update.
SECRET_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "posix": (),
        "cifs": (),
        "s3": ("s3_key", "s3_key_secret"),
        "gcs": ("gcs_key",),
        "azure": ("azure_key",),
    }
)


# Any text as in pgEdge (up to 64 characters); only line breaks and NUL are refused.
ScheduleId = Annotated[str, Meta(min_length=1, max_length=64)]


class BackupSchedule(_Request, kw_only=True):
    """A cron schedule of the node: a backup of `type`, or (`drill`) a restore drill of the
    newest set."""

    id: ScheduleId
    type: ScheduleType
    cron_expression: Annotated[str, Meta(min_length=1, max_length=128)]


class BackupConfig(_Request, kw_only=True):
    repositories: Annotated[list[Repository], Meta(min_length=1, max_length=4)]
    schedules: Annotated[list[BackupSchedule], Meta(max_length=32)] = field(default_factory=list)


class RestoreConfig(_Request, kw_only=True):
    """Where a restore reads from: a node's backups of some database in a repository."""

    source_database_id: Identifier
    source_node_name: NodeName
    source_database_name: PgName | None = None
    repository: Repository
    restore_options: Annotated[dict[str, ShortText], Meta(max_length=16)] = field(
        default_factory=dict
    )


class DatabaseUser(_Request, kw_only=True):
    username: PgName
    password: Secret | None = None
    db_owner: bool = False
    attributes: Annotated[list[str], Meta(max_length=16)] = field(default_factory=list)
    # pgEdge's roles to grant the user; refused with a reason unless empty (see validation).
    roles: Annotated[list[ShortText], Meta(max_length=16)] = field(default_factory=list)


ConfValue = Annotated[str, Meta(max_length=1024)] | int | float | bool
# One pg_hba.conf rule or pg_ident.conf map line per item, as in pgEdge.
ConfLines = Annotated[list[Annotated[str, Meta(max_length=1024)]], Meta(max_length=64)]
# pgEdge's CPU count: whole CPUs, up to three decimals, or millicpus ("500m").
Cpus = Annotated[str, Meta(max_length=16, pattern=r"^[0-9]+(\.[0-9]{1,3}|m)?$(?!\n)")]
# Memory in SI or IEC notation ("16GiB", "500M"); parsed in `spec.resources`.
Memory = Annotated[str, Meta(min_length=1, max_length=16)]
Text256 = Annotated[str, Meta(min_length=1, max_length=256)]
PostgresVersion = Annotated[str, Meta(min_length=1, max_length=16)]
SpockVersion = Annotated[str, Meta(min_length=1, max_length=16)]


class ExtraVolume(_Request, kw_only=True):
    """A host directory bind-mounted into the instance's container."""

    host_path: Text256
    destination_path: Text256


class ExtraNetwork(_Request, kw_only=True):
    """Another Docker network the instance's container joins."""

    id: Text256
    aliases: Annotated[list[Text256], Meta(max_length=8)] = field(default_factory=list)
    driver_opts: Annotated[dict[str, ShortText], Meta(max_length=16)] = field(default_factory=dict)


class SwarmOpts(_Request, kw_only=True):
    """pgEdge's Docker options of an instance's container (applied by the docker
    orchestrator)."""

    extra_volumes: Annotated[list[ExtraVolume], Meta(max_length=16)] = field(default_factory=list)
    extra_networks: Annotated[list[ExtraNetwork], Meta(max_length=8)] = field(default_factory=list)
    extra_labels: Annotated[dict[str, ShortText], Meta(max_length=64)] = field(default_factory=dict)
    image: Text256 | None = None


class OrchestratorOpts(_Request, kw_only=True):
    swarm: SwarmOpts | None = None


SqlScript = Annotated[
    list[Annotated[str, Meta(min_length=1, max_length=1024)]], Meta(max_length=256)
]


class DatabaseScripts(_Request, kw_only=True):
    """pgEdge's SQL run once at create; refused with a reason unless empty."""

    post_init: SqlScript = field(default_factory=list)
    post_database_create: SqlScript = field(default_factory=list)


# pgEdge's service instances (MCP, PostgREST, RAG): taken as any object so that a spec holding
# them is refused with a reason, not as malformed.
ServiceSpec = dict[str, Any]


MAX_INSTANCES_PER_NODE = 5


class NodeSpec(_Request, kw_only=True):
    name: NodeName
    # One instance per host: the first host runs the node's primary, each other one a
    # streaming replica (a Patroni cluster with automatic failover).
    host_ids: Annotated[list[Identifier], Meta(max_length=MAX_INSTANCES_PER_NODE)] = field(
        default_factory=list
    )
    # A node with replicas: commits wait until a replica has them too (Patroni's
    # synchronous_mode), so a failover loses no acknowledged commit, at the price of latency.
    synchronous_mode: bool = False
    # "15" or "15.<minor>" as in pgEdge; overrides the database's (both must say 15).
    postgres_version: PostgresVersion | None = None
    port: Port | None = None
    patroni_port: Port | None = None
    cpus: Cpus | None = None
    memory: Memory | None = None
    # Merged over the database's postgresql_conf (the node's value wins).
    postgresql_conf: Annotated[dict[str, ConfValue], Meta(max_length=256)] = field(
        default_factory=dict
    )
    # Placed before the database's rules, so they match first (as in pgEdge).
    pg_hba_conf: ConfLines = field(default_factory=list)
    pg_ident_conf: ConfLines = field(default_factory=list)
    orchestrator_opts: OrchestratorOpts | None = None
    backup_config: BackupConfig | None = None
    restore_config: RestoreConfig | None = None
    source_node: NodeName | None = None


class DatabaseSpec(_Request, kw_only=True):
    database_name: PgName
    # "15" or "15.<minor>" (pgEdge's form); the minor is the installed one.
    postgres_version: PostgresVersion = "15"
    # pgEdge's Spock major; the mesh here is pglogical 2 whatever it says (see validation).
    spock_version: SpockVersion | None = None
    # pgEdge's tenant (the database's owner); the request's top-level `tenant_id` lands here.
    tenant_id: Identifier | None = None
    port: Port = 0
    patroni_port: Port | None = None
    cpus: Cpus | None = None
    memory: Memory | None = None
    database_users: Annotated[list[DatabaseUser], Meta(max_length=64)] = field(default_factory=list)
    postgresql_conf: Annotated[dict[str, ConfValue], Meta(max_length=256)] = field(
        default_factory=dict
    )
    pg_hba_conf: ConfLines = field(default_factory=list)
    pg_ident_conf: ConfLines = field(default_factory=list)
    orchestrator_opts: OrchestratorOpts | None = None
    services: Annotated[list[ServiceSpec], Meta(max_length=16)] = field(default_factory=list)
    scripts: DatabaseScripts | None = None
    backup_config: BackupConfig | None = None
    restore_config: RestoreConfig | None = None
    nodes: Annotated[list[NodeSpec], Meta(min_length=1, max_length=16)]


class DatabaseRequest(_Request, kw_only=True):
    """Body of create (`id` optional) and of update (full desired spec)."""

    id: Identifier | None = None
    # pgEdge's owner of the database: stored in the spec, immutable after create.
    tenant_id: Identifier | None = None
    spec: DatabaseSpec


AnnotationKey = Annotated[str, Meta(pattern=r"^[a-z0-9_.-]{1,64}$(?!\n)")]
AnnotationValue = Annotated[str, Meta(max_length=256)]


class BackupRequest(_Request, kw_only=True):
    """Body of a manual node backup: type, user annotations, an optional repository and
    pgBackRest options for this backup (`backup_options`, from an allow-list)."""

    type: BackupType = "full"
    annotations: Annotated[dict[AnnotationKey, AnnotationValue], Meta(max_length=16)] = field(
        default_factory=dict
    )
    repository_id: RepositoryId | None = None
    backup_options: Annotated[dict[str, ShortText], Meta(max_length=16)] = field(
        default_factory=dict
    )


# pgBackRest's set labels: a full set, or a diff/incr set named after the full it builds on.
BackupLabel = Annotated[
    str, Meta(pattern=r"^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$(?!\n)", max_length=64)
]


class VerifyRequest(_Request, kw_only=True):
    """Body of a verify (empty: `pgbackrest verify` of every set). With `drill`, one set (`set`,
    else the newest) is restored into a scratch instance, recovered, checked and removed."""

    drill: bool = False
    set: BackupLabel | None = None


class RestoreRequest(_Request, kw_only=True):
    """Body of an in-place restore; an empty `target_nodes` means every node."""

    restore_config: RestoreConfig
    target_nodes: Annotated[list[NodeName], Meta(max_length=16)] = field(default_factory=list)
    pre_restore_backup: bool = False


def to_builtins(value: object) -> object:
    """Encode a spec model to plain JSON-compatible values (defaults omitted)."""
    return msgspec.to_builtins(value)


def repository_id(repository: Repository) -> str:
    """The repository's id: the explicit `id`, else its type (unique per backup_config)."""
    return repository.id or type_of(repository)


def is_filesystem(repository: Repository) -> bool:
    """True for a repository that is a directory on the host (posix, cifs)."""
    return type_of(repository) in FILESYSTEM_TYPES


def node_postgresql_conf(spec: DatabaseSpec, node: NodeSpec) -> dict[str, ConfValue]:
    """The user's postgresql.conf settings of one node: the database's, then the node's."""
    return {**spec.postgresql_conf, **node.postgresql_conf}


def node_hba_rules(spec: DatabaseSpec, node: NodeSpec) -> list[str]:
    """The node's pg_hba.conf rules, then the database's (first match wins, as in pgEdge)."""
    return [*node.pg_hba_conf, *spec.pg_hba_conf]


def node_ident_maps(spec: DatabaseSpec, node: NodeSpec) -> list[str]:
    """The node's pg_ident.conf lines, then the database's."""
    return [*node.pg_ident_conf, *spec.pg_ident_conf]


def type_of(repository: Repository) -> str:
    """The tag value (`posix`, `s3`, `gcs`, `azure`) of a repository."""
    # Read the class config directly: msgspec.inspect.type_info re-resolves every annotation
    # of the class on each call (about a millisecond), and this runs per repository per request.
    return str(type(repository).__struct_config__.tag)
