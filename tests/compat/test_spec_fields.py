"""Every field of pgEdge Control Plane's spec schemas, one at a time: accepted with pgEdge's
meaning, or refused with a reason — never "unknown field".

The field lists below are pgEdge's API design (`api/apiv1/design/database.go` and `backup.go`,
v0.9.0 and v0.10.0): each type's `g.Attribute` names. Each case validates a body through the
parser the API itself uses, for the orchestrator given.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from controlplane.errors import InvalidInputError
from controlplane.orchestrator.base import ContainerOptions, ExtraMount
from controlplane.pgbackrest.config import (
    InstanceLayout,
    plan_repositories,
    render_config,
)
from controlplane.spec import (
    parse_backup_request,
    parse_database_request,
    parse_restore_request,
)
from controlplane.spec.models import BackupRequest, DatabaseRequest, RestoreRequest
from controlplane.spec.resources import container_options

PGEDGE_FIELDS: dict[str, tuple[str, ...]] = {
    "CreateDatabaseRequest": ("id", "tenant_id", "spec"),
    "UpdateDatabaseRequest": ("tenant_id", "spec"),
    "DatabaseSpec": (
        *("database_name", "postgres_version", "spock_version", "port", "patroni_port"),
        *("cpus", "memory", "nodes", "database_users", "services", "backup_config"),
        *("restore_config", "postgresql_conf", "pg_hba_conf", "pg_ident_conf"),
        *("orchestrator_opts", "scripts"),
    ),
    "DatabaseNodeSpec": (
        *("name", "host_ids", "postgres_version", "port", "patroni_port", "cpus", "memory"),
        *("postgresql_conf", "pg_hba_conf", "pg_ident_conf", "backup_config"),
        *("restore_config", "orchestrator_opts", "source_node"),
    ),
    "DatabaseUserSpec": ("username", "password", "db_owner", "attributes", "roles"),
    "DatabaseScripts": ("post_init", "post_database_create"),
    "OrchestratorOpts": ("swarm",),
    "SwarmOpts": ("extra_volumes", "extra_networks", "extra_labels", "image"),
    "ExtraVolumesSpec": ("host_path", "destination_path"),
    "ExtraNetworkSpec": ("id", "aliases", "driver_opts"),
    "BackupConfigSpec": ("repositories", "schedules"),
    "BackupRepositorySpec": (
        *("id", "type", "s3_bucket", "s3_region", "s3_endpoint", "s3_key", "s3_key_secret"),
        *("gcs_bucket", "gcs_endpoint", "gcs_key", "azure_account", "azure_container"),
        *("azure_endpoint", "azure_key", "retention_full", "retention_full_type", "base_path"),
        "custom_options",
    ),
    "BackupScheduleSpec": ("id", "type", "cron_expression"),
    "RestoreConfigSpec": (
        *("source_database_id", "source_node_name", "source_database_name", "repository"),
        "restore_options",
    ),
    "RestoreRepositorySpec": (
        *("id", "type", "s3_bucket", "s3_region", "s3_endpoint", "s3_key", "s3_key_secret"),
        *("gcs_bucket", "gcs_endpoint", "gcs_key", "azure_account", "azure_container"),
        *("azure_endpoint", "azure_key", "base_path", "custom_options"),
    ),
    "RestoreDatabaseRequest": ("restore_config", "target_nodes"),
    "BackupOptions": ("type", "annotations", "backup_options"),
}

Request = DatabaseRequest | BackupRequest | RestoreRequest
POSIX = {"type": "posix", "base_path": "/backups"}
RESTORE = {"source_database_id": "shop", "source_node_name": "n1", "repository": POSIX}


def base() -> dict[str, Any]:
    return {"spec": {"database_name": "app", "nodes": [{"name": "n1", "host_ids": ["local"]}]}}


@dataclass
class Case:
    """One field: the body that sets it, the parser, the orchestrator, and what must hold."""

    body: dict[str, Any]
    check: Callable[[Any], object] | None = None  # accepted: asserts the meaning
    refused: tuple[str, str] | None = None  # refused: (path, words of the reason)
    kind: str = "database"
    orchestrator: str = "local"
    extra: list[tuple[str, str]] = field(default_factory=list)


def spec_with(**fields: Any) -> dict[str, Any]:
    body = base()
    body["spec"].update(fields)
    return body


def node_with(**fields: Any) -> dict[str, Any]:
    body = base()
    body["spec"]["nodes"][0].update(fields)
    return body


def repo_with(**fields: Any) -> dict[str, Any]:
    return spec_with(backup_config={"repositories": [{**POSIX, **fields}]})


def s3_with(**fields: Any) -> dict[str, Any]:
    return spec_with(backup_config={"repositories": [{"type": "s3", "s3_bucket": "bkt", **fields}]})


def restore_repo_with(**fields: Any) -> dict[str, Any]:
    return spec_with(restore_config={**RESTORE, "repository": fields})


def swarm_with(**fields: Any) -> dict[str, Any]:
    return node_with(orchestrator_opts={"swarm": fields})


def spec(request: Any) -> Any:
    return request.spec


def rendered(request: DatabaseRequest) -> str:
    """The pgbackrest.conf the database-level backup_config renders for node n1."""
    config = request.spec.backup_config
    assert config is not None
    layout = InstanceLayout(
        instance_dir="/i", pg_data="/i/data", pg_port=5432, pg_socket_dir="/i/s"
    )
    plans = plan_repositories(config, database_id="app", node_name="n1")
    return render_config(layout, plans, process_max=1)


def repo0(request: DatabaseRequest) -> Any:
    assert request.spec.backup_config is not None
    return request.spec.backup_config.repositories[0]


def restore_repo(request: DatabaseRequest) -> Any:
    assert request.spec.restore_config is not None
    return request.spec.restore_config.repository


def _container(request: DatabaseRequest) -> ContainerOptions:
    """The container options node n1's instances get."""
    return container_options(request.spec, request.spec.nodes[0])


DOCKER_ONLY = "no container"
REPO_CASES: dict[str, Case] = {
    "id": Case(repo_with(id="nightly"), lambda r: "/databases/app/nightly/n1/1" in rendered(r)),
    "type": Case(repo_with(type="cifs"), lambda r: "repo1-type=cifs" in rendered(r)),
    "s3_bucket": Case(s3_with(), lambda r: "repo1-s3-bucket=bkt" in rendered(r)),
    "s3_region": Case(
        s3_with(s3_region="eu-west-1"), lambda r: "repo1-s3-region=eu-west-1" in rendered(r)
    ),
    "s3_endpoint": Case(
        s3_with(s3_endpoint="minio.local"), lambda r: "repo1-s3-endpoint=minio.local" in rendered(r)
    ),
    "s3_key": Case(s3_with(s3_key="AKIA", s3_key_secret="s"), lambda r: repo0(r).s3_key == "AKIA"),
    "s3_key_secret": Case(
        s3_with(s3_key="AKIA", s3_key_secret="s"),
        lambda r: "s3-key-type" not in rendered(r) and repo0(r).s3_key_secret == "s",
    ),
    "gcs_bucket": Case(
        repo_with(type="gcs", base_path=None, gcs_bucket="bkt"),
        lambda r: "repo1-gcs-bucket=bkt" in rendered(r),
    ),
    "gcs_endpoint": Case(
        repo_with(type="gcs", base_path=None, gcs_bucket="bkt", gcs_endpoint="gcs.local"),
        lambda r: "repo1-gcs-endpoint=gcs.local" in rendered(r),
    ),
    "gcs_key": Case(
        repo_with(type="gcs", base_path=None, gcs_bucket="bkt", gcs_key="a2V5"),
        lambda r: repo0(r).gcs_key == "a2V5" and "gcs-key-type=auto" not in rendered(r),
    ),
    "azure_account": Case(
        repo_with(type="azure", base_path=None, azure_account="acct", azure_container="c1c"),
        lambda r: "repo1-azure-account=acct" in rendered(r),
    ),
    "azure_container": Case(
        repo_with(type="azure", base_path=None, azure_account="acct", azure_container="c1c"),
        lambda r: "repo1-azure-container=c1c" in rendered(r),
    ),
    "azure_endpoint": Case(
        repo_with(
            type="azure",
            base_path=None,
            azure_account="acct",
            azure_container="c1c",
            azure_endpoint="blob.local",
        ),
        lambda r: "repo1-azure-endpoint=blob.local" in rendered(r),
    ),
    "azure_key": Case(
        repo_with(
            type="azure", base_path=None, azure_account="a", azure_container="c1c", azure_key="k"
        ),
        lambda r: repo0(r).azure_key == "k",
    ),
    "retention_full": Case(
        repo_with(retention_full=14), lambda r: "repo1-retention-full=14" in rendered(r)
    ),
    "retention_full_type": Case(
        repo_with(retention_full_type="count"),
        lambda r: "repo1-retention-full-type=count" in rendered(r),
    ),
    "base_path": Case(repo_with(), lambda r: "repo1-path=/backups/databases/app/" in rendered(r)),
    "custom_options": Case(
        repo_with(custom_options={"storage-upload-chunk-size": "5MiB", "compress-type": "lz4"}),
        lambda r: (
            "repo1-storage-upload-chunk-size=5MiB" in rendered(r)
            and "\ncompress-type=lz4" in rendered(r)
        ),
    ),
}

RESTORE_REPO_CASES: dict[str, Case] = {
    "id": Case(restore_repo_with(**POSIX, id="old"), lambda r: restore_repo(r).id == "old"),
    "type": Case(restore_repo_with(type="cifs", base_path="/mnt"), lambda r: True),
    "s3_bucket": Case(
        restore_repo_with(type="s3", s3_bucket="bkt"), lambda r: restore_repo(r).s3_bucket == "bkt"
    ),
    "s3_region": Case(
        restore_repo_with(type="s3", s3_bucket="bkt", s3_region="us-east-2"),
        lambda r: restore_repo(r).s3_region == "us-east-2",
    ),
    "s3_endpoint": Case(
        restore_repo_with(type="s3", s3_bucket="bkt", s3_endpoint="m.local"),
        lambda r: restore_repo(r).s3_endpoint == "m.local",
    ),
    "s3_key": Case(
        restore_repo_with(type="s3", s3_bucket="bkt", s3_key="k", s3_key_secret="s"),
        lambda r: restore_repo(r).s3_key == "k",
    ),
    "s3_key_secret": Case(
        restore_repo_with(type="s3", s3_bucket="bkt", s3_key="k", s3_key_secret="s"),
        lambda r: restore_repo(r).s3_key_secret == "s",
    ),
    "gcs_bucket": Case(
        restore_repo_with(type="gcs", gcs_bucket="bkt"), lambda r: restore_repo(r).gcs_bucket
    ),
    "gcs_endpoint": Case(
        restore_repo_with(type="gcs", gcs_bucket="bkt", gcs_endpoint="g.local"),
        lambda r: restore_repo(r).gcs_endpoint == "g.local",
    ),
    "gcs_key": Case(
        restore_repo_with(type="gcs", gcs_bucket="bkt", gcs_key="a2V5"),
        lambda r: restore_repo(r).gcs_key == "a2V5",
    ),
    "azure_account": Case(
        restore_repo_with(type="azure", azure_account="a", azure_container="c1c"),
        lambda r: restore_repo(r).azure_account == "a",
    ),
    "azure_container": Case(
        restore_repo_with(type="azure", azure_account="a", azure_container="c1c"),
        lambda r: restore_repo(r).azure_container == "c1c",
    ),
    "azure_endpoint": Case(
        restore_repo_with(type="azure", azure_account="a", azure_container="c", azure_endpoint="e"),
        lambda r: restore_repo(r).azure_endpoint == "e",
    ),
    "azure_key": Case(
        restore_repo_with(type="azure", azure_account="a", azure_container="c", azure_key="k"),
        lambda r: restore_repo(r).azure_key == "k",
    ),
    "base_path": Case(
        restore_repo_with(**POSIX), lambda r: restore_repo(r).base_path == "/backups"
    ),
    "custom_options": Case(
        restore_repo_with(**POSIX, custom_options={"s3-kms-key-id": "1234"}),
        lambda r: restore_repo(r).custom_options == {"s3-kms-key-id": "1234"},
    ),
}


def _node(request: DatabaseRequest) -> Any:
    return request.spec.nodes[0]


CASES: dict[str, Case] = {
    "CreateDatabaseRequest.id": Case({**base(), "id": "shop"}, lambda r: r.id == "shop"),
    "CreateDatabaseRequest.tenant_id": Case(
        {**base(), "tenant_id": "engineering"}, lambda r: r.spec.tenant_id == "engineering"
    ),
    "CreateDatabaseRequest.spec": Case(base(), lambda r: r.spec.database_name == "app"),
    "UpdateDatabaseRequest.tenant_id": Case(
        {**base(), "tenant_id": "eng"}, lambda r: r.spec.tenant_id == "eng"
    ),
    "UpdateDatabaseRequest.spec": Case(base(), lambda r: len(r.spec.nodes) == 1),
    "DatabaseSpec.database_name": Case(base(), lambda r: r.spec.database_name == "app"),
    "DatabaseSpec.postgres_version": Case(
        spec_with(postgres_version="15.6"), lambda r: r.spec.postgres_version == "15.6"
    ),
    "DatabaseSpec.spock_version": Case(
        spec_with(spock_version="5"), lambda r: r.spec.spock_version == "5"
    ),
    "DatabaseSpec.port": Case(spec_with(port=5432), lambda r: r.spec.port == 5432),
    "DatabaseSpec.patroni_port": Case(
        spec_with(patroni_port=8888), refused=("spec.patroni_port", "picks each Patroni")
    ),
    "DatabaseSpec.cpus": Case(spec_with(cpus="500m"), refused=("spec.cpus", "plain process")),
    "DatabaseSpec.memory": Case(
        spec_with(memory="1GiB"), refused=("spec.memory", "shared_buffers")
    ),
    "DatabaseSpec.nodes": Case(base(), lambda r: r.spec.nodes[0].host_ids == ["local"]),
    "DatabaseSpec.database_users": Case(
        spec_with(database_users=[{"username": "admin", "db_owner": True}]),
        lambda r: r.spec.database_users[0].db_owner,
    ),
    "DatabaseSpec.services": Case(
        spec_with(services=[{"service_id": "mcp", "service_type": "mcp"}]),
        refused=("spec.services[0]", "not run by this control plane"),
    ),
    "DatabaseSpec.backup_config": Case(repo_with(), lambda r: r.spec.backup_config is not None),
    "DatabaseSpec.restore_config": Case(
        spec_with(restore_config=RESTORE), lambda r: r.spec.restore_config is not None
    ),
    "DatabaseSpec.postgresql_conf": Case(
        spec_with(postgresql_conf={"max_connections": 1000}),
        lambda r: r.spec.postgresql_conf == {"max_connections": 1000},
    ),
    "DatabaseSpec.pg_hba_conf": Case(
        spec_with(pg_hba_conf=["hostssl all app 203.0.113.0/24 scram-sha-256"]),
        lambda r: r.spec.pg_hba_conf == ["hostssl all app 203.0.113.0/24 scram-sha-256"],
    ),
    "DatabaseSpec.pg_ident_conf": Case(
        spec_with(pg_ident_conf=["ssl_users  CN=alice,O=example  alice"]),
        lambda r: len(r.spec.pg_ident_conf) == 1,
    ),
    "DatabaseSpec.orchestrator_opts": Case(
        spec_with(orchestrator_opts={"swarm": {"extra_labels": {"team": "db"}}}),
        refused=("spec.orchestrator_opts.swarm.extra_labels", DOCKER_ONLY),
    ),
    "DatabaseSpec.scripts": Case(
        spec_with(scripts={"post_init": ["CREATE ROLE x NOLOGIN"]}),
        refused=("spec.scripts.post_init", "not run by this control plane"),
    ),
    "DatabaseNodeSpec.name": Case(base(), lambda r: _node(r).name == "n1"),
    "DatabaseNodeSpec.host_ids": Case(
        node_with(host_ids=["local", "replica-1"]), lambda r: len(_node(r).host_ids) == 2
    ),
    "DatabaseNodeSpec.postgres_version": Case(
        node_with(postgres_version="15.8"), lambda r: _node(r).postgres_version == "15.8"
    ),
    "DatabaseNodeSpec.port": Case(node_with(port=6432), lambda r: _node(r).port == 6432),
    "DatabaseNodeSpec.patroni_port": Case(
        node_with(patroni_port=8888), refused=("spec.nodes[0].patroni_port", "Patroni")
    ),
    "DatabaseNodeSpec.cpus": Case(node_with(cpus="2"), refused=("spec.nodes[0].cpus", "plain")),
    "DatabaseNodeSpec.memory": Case(
        node_with(memory="512M"), refused=("spec.nodes[0].memory", "plain process")
    ),
    "DatabaseNodeSpec.postgresql_conf": Case(
        node_with(postgresql_conf={"work_mem": "64MB"}),
        lambda r: _node(r).postgresql_conf == {"work_mem": "64MB"},
    ),
    "DatabaseNodeSpec.pg_hba_conf": Case(
        node_with(pg_hba_conf=["host example myapp_user 10.0.0.0/8 scram-sha-256"]),
        lambda r: len(_node(r).pg_hba_conf) == 1,
    ),
    "DatabaseNodeSpec.pg_ident_conf": Case(
        node_with(pg_ident_conf=["ssl_users CN=bob bob"]), lambda r: len(_node(r).pg_ident_conf)
    ),
    "DatabaseNodeSpec.backup_config": Case(
        node_with(backup_config={"repositories": [POSIX]}), lambda r: _node(r).backup_config
    ),
    "DatabaseNodeSpec.restore_config": Case(
        node_with(restore_config=RESTORE), lambda r: _node(r).restore_config
    ),
    "DatabaseNodeSpec.orchestrator_opts": Case(
        swarm_with(image="registry.local/pg:15"),
        refused=("spec.nodes[0].orchestrator_opts.swarm.image", DOCKER_ONLY),
    ),
    "DatabaseNodeSpec.source_node": Case(
        {
            "spec": {
                "database_name": "app",
                "nodes": [{"name": "n1"}, {"name": "n2", "source_node": "n1"}],
            }
        },
        lambda r: r.spec.nodes[1].source_node == "n1",
    ),
    "DatabaseUserSpec.username": Case(
        spec_with(database_users=[{"username": "app"}]), lambda r: r.spec.database_users
    ),
    "DatabaseUserSpec.password": Case(
        spec_with(database_users=[{"username": "app", "password": "pw"}]),
        lambda r: r.spec.database_users[0].password == "pw",
    ),
    "DatabaseUserSpec.db_owner": Case(
        spec_with(database_users=[{"username": "app", "db_owner": True}]),
        lambda r: r.spec.database_users[0].db_owner,
    ),
    "DatabaseUserSpec.attributes": Case(
        spec_with(database_users=[{"username": "app", "attributes": ["LOGIN", "CREATEDB"]}]),
        lambda r: r.spec.database_users[0].attributes == ["LOGIN", "CREATEDB"],
    ),
    "DatabaseUserSpec.roles": Case(
        spec_with(database_users=[{"username": "app", "roles": ["pg_read_all_data"]}]),
        lambda r: r.spec.database_users[0].roles == ["pg_read_all_data"],
    ),
    "DatabaseScripts.post_init": Case(
        spec_with(scripts={"post_init": ["SELECT 1"]}),
        refused=("spec.scripts.post_init", "run the statements"),
    ),
    "DatabaseScripts.post_database_create": Case(
        spec_with(scripts={"post_database_create": ["SELECT 1"]}),
        refused=("spec.scripts.post_database_create", "run the statements"),
    ),
    "OrchestratorOpts.swarm": Case(
        swarm_with(extra_labels={"traefik.enable": "true"}),
        lambda r: _container(r).labels == (("traefik.enable", "true"),),
        orchestrator="docker",
    ),
    "SwarmOpts.extra_volumes": Case(
        swarm_with(extra_volumes=[{"host_path": "/mnt/b", "destination_path": "/backups"}]),
        lambda r: (
            _container(r).volumes == (ExtraMount(host_path="/mnt/b", destination_path="/backups"),)
        ),
        orchestrator="docker",
    ),
    "SwarmOpts.extra_networks": Case(
        swarm_with(extra_networks=[{"id": "traefik-public"}]),
        refused=("spec.nodes[0].orchestrator_opts.swarm.extra_networks[0]", "host's network"),
        orchestrator="docker",
    ),
    "SwarmOpts.extra_labels": Case(
        swarm_with(extra_labels={"environment": "staging"}),
        lambda r: _container(r).labels == (("environment", "staging"),),
        orchestrator="docker",
    ),
    "SwarmOpts.image": Case(
        swarm_with(image="registry.local/pg:15"),
        lambda r: _container(r).image == "registry.local/pg:15",
        orchestrator="docker",
    ),
    "ExtraVolumesSpec.host_path": Case(
        swarm_with(extra_volumes=[{"host_path": "rel", "destination_path": "/b"}]),
        refused=("spec.nodes[0].orchestrator_opts.swarm.extra_volumes[0].host_path", "absolute"),
        orchestrator="docker",
    ),
    "ExtraVolumesSpec.destination_path": Case(
        swarm_with(
            extra_volumes=[{"host_path": "/m", "destination_path": "/var/lib/postgresql/data"}]
        ),
        refused=(
            "spec.nodes[0].orchestrator_opts.swarm.extra_volumes[0].destination_path",
            "its own data",
        ),
        orchestrator="docker",
    ),
    "ExtraNetworkSpec.id": Case(
        swarm_with(extra_networks=[{"id": "n"}]),
        refused=("spec.nodes[0].orchestrator_opts.swarm.extra_networks[0]", "cannot join"),
        orchestrator="docker",
    ),
    "ExtraNetworkSpec.aliases": Case(
        swarm_with(extra_networks=[{"id": "n", "aliases": ["db"]}]),
        refused=("spec.nodes[0].orchestrator_opts.swarm.extra_networks[0]", "cannot join"),
        orchestrator="docker",
    ),
    "ExtraNetworkSpec.driver_opts": Case(
        swarm_with(extra_networks=[{"id": "n", "driver_opts": {"a": "b"}}]),
        refused=("spec.nodes[0].orchestrator_opts.swarm.extra_networks[0]", "cannot join"),
        orchestrator="docker",
    ),
    "BackupConfigSpec.repositories": Case(repo_with(), lambda r: len(repo0(r).base_path) > 0),
    "BackupConfigSpec.schedules": Case(
        spec_with(
            backup_config={
                "repositories": [POSIX],
                "schedules": [{"id": "daily full", "type": "full", "cron_expression": "@daily"}],
            }
        ),
        lambda r: r.spec.backup_config.schedules[0].cron_expression == "@daily",
    ),
    "BackupScheduleSpec.id": Case(
        spec_with(
            backup_config={
                "repositories": [POSIX],
                "schedules": [
                    {"id": "Nightly_Full.1", "type": "full", "cron_expression": "0 0 * * *"}
                ],
            }
        ),
        lambda r: r.spec.backup_config.schedules[0].id == "Nightly_Full.1",
    ),
    "BackupScheduleSpec.type": Case(
        spec_with(
            backup_config={
                "repositories": [POSIX],
                "schedules": [{"id": "h", "type": "incr", "cron_expression": "0 * * * *"}],
            }
        ),
        lambda r: r.spec.backup_config.schedules[0].type == "incr",
    ),
    "BackupScheduleSpec.cron_expression": Case(
        spec_with(
            backup_config={
                "repositories": [POSIX],
                "schedules": [{"id": "q", "type": "full", "cron_expression": "0 6 * * ?"}],
            }
        ),
        lambda r: r.spec.backup_config.schedules[0].cron_expression == "0 6 * * ?",
    ),
    "RestoreConfigSpec.source_database_id": Case(
        spec_with(restore_config=RESTORE), lambda r: r.spec.restore_config.source_database_id
    ),
    "RestoreConfigSpec.source_node_name": Case(
        spec_with(restore_config=RESTORE),
        lambda r: r.spec.restore_config.source_node_name == "n1",
    ),
    "RestoreConfigSpec.source_database_name": Case(
        spec_with(restore_config={**RESTORE, "source_database_name": "shop"}),
        lambda r: r.spec.restore_config.source_database_name == "shop",
    ),
    "RestoreConfigSpec.repository": Case(
        spec_with(restore_config=RESTORE), lambda r: restore_repo(r).base_path == "/backups"
    ),
    "RestoreConfigSpec.restore_options": Case(
        spec_with(restore_config={**RESTORE, "restore_options": {"type": "immediate"}}),
        lambda r: r.spec.restore_config.restore_options,
    ),
    "RestoreDatabaseRequest.restore_config": Case(
        {"restore_config": RESTORE},
        lambda r: r.restore_config.source_node_name == "n1",
        kind="restore",
    ),
    "RestoreDatabaseRequest.target_nodes": Case(
        {"restore_config": RESTORE, "target_nodes": ["n1"]},
        lambda r: r.target_nodes == ["n1"],
        kind="restore",
    ),
    "BackupOptions.type": Case({"type": "diff"}, lambda r: r.type == "diff", kind="backup"),
    "BackupOptions.annotations": Case(
        {"type": "full", "annotations": {"initiated-by": "cron"}},
        lambda r: r.annotations == {"initiated-by": "cron"},
        kind="backup",
    ),
    "BackupOptions.backup_options": Case(
        {"type": "full", "backup_options": {"archive-check": "n"}},
        lambda r: r.backup_options == {"archive-check": "n"},
        kind="backup",
    ),
}
CASES |= {f"BackupRepositorySpec.{name}": case for name, case in REPO_CASES.items()}
CASES |= {f"RestoreRepositorySpec.{name}": case for name, case in RESTORE_REPO_CASES.items()}


def parse(case: Case) -> Request:
    body = msgspec.json.encode(copy.deepcopy(case.body))
    if case.kind == "backup":
        return parse_backup_request(body)
    if case.kind == "restore":
        return parse_restore_request(body)
    return parse_database_request(body, orchestrator=case.orchestrator)


def test_every_pgedge_field_has_a_case() -> None:
    """The cases cover exactly pgEdge's fields: none left out, none invented."""
    listed = {f"{name}.{f}" for name, fields in PGEDGE_FIELDS.items() for f in fields}
    assert set(CASES) == listed
    assert len(listed) >= 75


@pytest.mark.parametrize("name", sorted(CASES))
def test_pgedge_field(name: str) -> None:
    """The field is accepted with pgEdge's meaning, or refused at its path with a reason."""
    case = CASES[name]
    if case.refused is None:
        request = parse(case)
        assert case.check is not None
        assert case.check(request)
        return
    with pytest.raises(InvalidInputError) as raised:
        parse(case)
    errors = raised.value.errors
    assert all(e["message"] != "unknown field" for e in errors), errors
    path, words = case.refused
    messages = [e["message"] for e in errors if e["path"] == path]
    assert messages, errors
    assert any(words in message for message in messages), messages


def test_a_full_pgedge_example_spec_is_accepted_unchanged() -> None:
    """pgEdge's documented create request with backups to an NFS mount (docker) and a
    nightly schedule validates as it is."""
    body = {
        "id": "storefront",
        "tenant_id": "engineering",
        "spec": {
            "database_name": "storefront",
            "postgres_version": "15.8",
            "spock_version": "5",
            "port": 5432,
            "database_users": [
                {
                    "username": "admin",
                    "password": "pw",
                    "db_owner": True,
                    "attributes": ["SUPERUSER", "LOGIN"],
                }
            ],
            "nodes": [
                {
                    "name": "n1",
                    "host_ids": ["host-1"],
                    "orchestrator_opts": {
                        "swarm": {
                            "extra_volumes": [
                                {"host_path": "/mnt/backups", "destination_path": "/backups"}
                            ]
                        }
                    },
                    "backup_config": {"repositories": [{"type": "posix", "base_path": "/backups"}]},
                },
                {"name": "n2", "host_ids": ["host-2"]},
            ],
            "backup_config": {
                "repositories": [
                    {"type": "s3", "s3_bucket": "backups-9f81", "s3_region": "us-east-1"}
                ],
                "schedules": [
                    {"id": "nightly-full-backup", "type": "full", "cron_expression": "0 0 * * *"},
                    {"id": "hourly-incremental", "type": "incr", "cron_expression": "0 * * * *"},
                ],
            },
        },
    }
    request = parse_database_request(msgspec.json.encode(body), orchestrator=None)
    assert request.spec.tenant_id == "engineering"
    assert request.spec.nodes[0].orchestrator_opts is not None
    # The docker orchestrator applies it: n1's containers mount the share where its
    # repository's base_path points; n2 has no extra volume.
    request = parse_database_request(msgspec.json.encode(body), orchestrator="docker")
    n1, n2 = (container_options(request.spec, node) for node in request.spec.nodes)
    assert n1.volumes == (ExtraMount(host_path="/mnt/backups", destination_path="/backups"),)
    assert n2.volumes == ()
    # The local orchestrator has no container to mount it in, and says so at its path.
    with pytest.raises(InvalidInputError) as raised:
        parse_database_request(msgspec.json.encode(body), orchestrator="local")
    assert [e["path"] for e in raised.value.errors] == [
        "spec.nodes[0].orchestrator_opts.swarm.extra_volumes"
    ]
