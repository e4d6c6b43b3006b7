"""Spec request parsing: shape errors, semantic rules and their exact JSON paths."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from controlplane.errors import InvalidInputError, MalformedRequestError
from controlplane.spec import (
    AzureRepository,
    BackupRequest,
    DatabaseRequest,
    GcsRepository,
    PosixRepository,
    RestoreRequest,
    S3Repository,
    normalise_restore_options,
    parse_backup_request,
    parse_database_request,
    parse_request,
    parse_restore_request,
    parse_time_target,
    repository_id,
)

Body = dict[str, Any]


def full_body() -> Body:
    """A valid request using every part of the spec."""
    return {
        "id": "storefront",
        "spec": {
            "database_name": "app",
            "port": 0,
            "database_users": [
                {
                    "username": "admin",
                    "password": "pw-admin",
                    "db_owner": True,
                    "attributes": ["LOGIN", "CREATEDB"],
                },
                {"username": "reader", "attributes": ["LOGIN", "NOSUPERUSER"]},
            ],
            "postgresql_conf": {
                "max_connections": 200,
                "work_mem": "8MB",
                "jit": False,
                "random_page_cost": 1.1,
                "auto_explain.log_min_duration": "1s",
            },
            "backup_config": {
                "repositories": [
                    {
                        "type": "posix",
                        "base_path": "/var/backups/pg",
                        "custom_options": {"compress-level": "3", "repo-bundle-limit": "2MiB"},
                    },
                    {
                        "type": "s3",
                        "base_path": "/",
                        "s3_bucket": "backups",
                        "s3_region": "us-east-1",
                        "s3_endpoint": "localhost",
                        "s3_key": "AKIAEXAMPLE",
                        "s3_key_secret": "s3-secret",
                        "s3_uri_style": "path",
                        "storage_port": 9000,
                        "storage_verify_tls": False,
                        "storage_ca_file": "/etc/ssl/ca.pem",
                        "cipher": True,
                    },
                    {
                        "type": "gcs",
                        "gcs_bucket": "backups",
                        "gcs_key_type": "service",
                        "gcs_key": "gcs-key",
                    },
                    {
                        "type": "azure",
                        "azure_account": "acct",
                        "azure_container": "backups",
                        "azure_key": "azure-key",
                        "retention_full": 2,
                        "retention_full_type": "time",
                        "retention_diff": 3,
                    },
                ],
                "schedules": [
                    {"id": "nightly", "type": "full", "cron_expression": "0 2 * * *"},
                    {"id": "hourly", "type": "incr", "cron_expression": "15 * * * 1-5"},
                ],
            },
            "restore_config": {
                "source_database_id": "old-store",
                "source_node_name": "n1",
                "source_database_name": "app",
                "repository": {
                    "type": "s3",
                    "id": "main",
                    "s3_bucket": "backups",
                    "s3_region": "us-east-1",
                },
                "restore_options": {
                    "type": "time",
                    "target": "2025-05-05 09:38:52-04",
                    "target_exclusive": "n",
                    "set": "20250505-093852F",
                },
            },
            "nodes": [
                {"name": "n1", "host_ids": ["local"], "port": 6001},
                {
                    "name": "n2",
                    "port": 6002,
                    "source_node": "n1",
                    "backup_config": {
                        "repositories": [{"type": "posix", "id": "local", "base_path": "/srv/pg"}],
                        "schedules": [
                            {"id": "daily", "type": "diff", "cron_expression": "0 3 * * *"}
                        ],
                    },
                },
                {
                    "name": "n3",
                    "restore_config": {
                        "source_database_id": "old-store",
                        "source_node_name": "n2",
                        "repository": {
                            "type": "azure",
                            "azure_account": "acct",
                            "azure_container": "old",
                            "azure_key": "azure-node-key",
                        },
                        "restore_options": {"type": "immediate", "process-max": "4"},
                    },
                },
            ],
        },
    }


def minimal_body(**spec: Any) -> Body:
    """A valid one-node request, with `spec` fields overridden."""
    return {"spec": {"database_name": "app", "nodes": [{"name": "n1"}], **spec}}


def posix_backup(**repository: Any) -> Body:
    """A backup_config with one posix repository, with `repository` fields overridden."""
    return {"repositories": [{"type": "posix", "base_path": "/backups", **repository}]}


def restore_config(**options: str) -> Body:
    """A restore_config from a posix repository with the given restore_options."""
    return {
        "source_database_id": "old",
        "source_node_name": "n1",
        "repository": {"type": "posix", "base_path": "/backups"},
        "restore_options": options,
    }


def problems(body: Body, parse: Callable[[bytes], object] = parse_database_request) -> list[Any]:
    """The `{path, message}` list the parser reports for `body` (which must be invalid)."""
    with pytest.raises(InvalidInputError) as info:
        parse(msgspec.json.encode(body))
    return info.value.errors


def paths(body: Body, parse: Callable[[bytes], object] = parse_database_request) -> list[str]:
    """Only the paths of the problems reported for `body`."""
    return [error["path"] for error in problems(body, parse)]


def message_at(
    body: Body, path: str, parse: Callable[[bytes], object] = parse_database_request
) -> str:
    """The one message reported for `body`, asserting it is at `path`."""
    found = problems(body, parse)
    assert [error["path"] for error in found] == [path], found
    return str(found[0]["message"])


# --- parsing and shape -------------------------------------------------------------------


def test_full_spec_parses() -> None:
    """A spec using all four repository types, node overrides, schedules and restores parses."""
    request = parse_database_request(msgspec.json.encode(full_body()))
    spec = request.spec
    assert request.id == "storefront"
    assert spec.backup_config is not None
    kinds = [type(r) for r in spec.backup_config.repositories]
    assert kinds == [PosixRepository, S3Repository, GcsRepository, AzureRepository]
    assert [repository_id(r) for r in spec.backup_config.repositories] == [
        "posix",
        "s3",
        "gcs",
        "azure",
    ]
    assert spec.nodes[1].backup_config is not None
    assert spec.nodes[1].backup_config.schedules[0].cron_expression == "0 3 * * *"
    assert spec.nodes[2].restore_config is not None
    assert isinstance(spec.nodes[2].restore_config.repository, AzureRepository)
    assert spec.postgresql_conf["max_connections"] == 200


def test_parse_accepts_str_and_generic_model() -> None:
    """parse_request works for any request model and accepts a str body."""
    request = parse_request('{"type": "diff"}', BackupRequest)
    assert request == BackupRequest(type="diff")


def test_body_that_is_not_json_is_malformed() -> None:
    """A body that is not JSON raises MalformedRequestError, not InvalidInputError."""
    with pytest.raises(MalformedRequestError):
        parse_database_request(b"{not json")


@pytest.mark.parametrize("body", [b"[]", b'"spec"', b"null", b"1"])
def test_body_that_is_not_an_object_is_malformed(body: bytes) -> None:
    """A JSON body that is not an object raises MalformedRequestError."""
    with pytest.raises(MalformedRequestError):
        parse_database_request(body)


def test_several_errors_are_reported_at_once() -> None:
    """Shape errors at different depths are all reported in one InvalidInputError."""
    body = minimal_body(
        port="5432",
        colour="blue",
        nodes=[
            {"name": "n1", "backup_config": {"repositories": [{"type": "s3", "s3_bucket": "b"}]}},
            {"name": "node-2", "port": 70000},
        ],
    )
    assert paths(body) == [
        "spec.colour",
        "spec.port",
        "spec.nodes[0].backup_config.repositories[0].s3_bucket",
        "spec.nodes[1].name",
        "spec.nodes[1].port",
    ]


def test_several_semantic_errors_are_reported_at_once() -> None:
    """Semantic errors in different parts of the spec are all reported together."""
    body = minimal_body(
        database_users=[{"username": "postgres"}],
        postgresql_conf={"port": 5433},
        nodes=[{"name": "n1", "source_node": "n9"}, {"name": "n1"}],
        backup_config=posix_backup(base_path="relative"),
    )
    assert paths(body) == [
        "spec.nodes[1].name",
        "spec.nodes[0].source_node",
        "spec.database_users[0].username",
        "spec.postgresql_conf.port",
        "spec.backup_config.repositories[0].base_path",
    ]


def test_unknown_field_at_depth() -> None:
    """An unknown field deep inside a repository is reported at its own path."""
    body = minimal_body(
        nodes=[{"name": "n1"}, {"name": "n2", "backup_config": posix_backup(bucket="x")}]
    )
    path = "spec.nodes[1].backup_config.repositories[0].bucket"
    assert message_at(body, path) == "unknown field"


def test_wrong_type_at_depth() -> None:
    """A wrong scalar type deep in the spec names the expected and actual types."""
    body = minimal_body(backup_config=posix_backup(retention_full="7"))
    path = "spec.backup_config.repositories[0].retention_full"
    assert message_at(body, path) == "expected `int`, got `str`"


def test_wrong_container_type() -> None:
    """An array where an object is expected (and vice versa) is reported at that path."""
    body = minimal_body(backup_config=[], database_users={})
    assert problems(body) == [
        {"path": "spec.database_users", "message": "expected `array`, got `object`"},
        {"path": "spec.backup_config", "message": "expected `object`, got `array`"},
    ]


def test_required_field_missing() -> None:
    """A missing required field is reported as such at the field's path."""
    assert message_at({"spec": {"nodes": [{"name": "n1"}]}}, "spec.database_name") == (
        "required field"
    )


def test_list_bounds() -> None:
    """Too few or too many list items are reported at the list's path."""
    body = minimal_body(nodes=[], backup_config={"repositories": []})
    assert problems(body) == [
        {"path": "spec.backup_config.repositories", "message": "expected at least 1 item"},
        {"path": "spec.nodes", "message": "expected at least 1 item"},
    ]


def test_missing_repository_type() -> None:
    """A repository without `type` is reported at its `type` path, listing the choices."""
    body = minimal_body(backup_config={"repositories": [{"base_path": "/b"}]})
    path = "spec.backup_config.repositories[0].type"
    assert message_at(body, path) == "required field (one of posix, cifs, s3, gcs, azure)"


def test_unknown_repository_type() -> None:
    """An unknown repository type is reported at its `type` path."""
    body = minimal_body(
        nodes=[{"name": "n1", "restore_config": {**restore_config(), "repository": {"type": 3}}}]
    )
    path = "spec.nodes[0].restore_config.repository.type"
    assert message_at(body, path) == "unknown type 3 (expected one of posix, cifs, s3, gcs, azure)"


def test_repository_fields_follow_the_tag() -> None:
    """Fields of another repository type are unknown for the tagged type."""
    body = minimal_body(backup_config=posix_backup(s3_bucket="bucket"))
    assert message_at(body, "spec.backup_config.repositories[0].s3_bucket") == "unknown field"


def test_optional_null_is_accepted() -> None:
    """An explicit null for an optional field is the same as leaving it out."""
    request = parse_database_request(msgspec.json.encode(minimal_body(backup_config=None)))
    assert request.spec.backup_config is None


def test_node_name_with_trailing_newline_is_rejected() -> None:
    """A pattern-checked name cannot sneak in a trailing newline (Python's `$` allows it)."""
    body = minimal_body(nodes=[{"name": "n1\n"}])
    assert message_at(body, "spec.nodes[0].name") == ("expected `str` matching regex '^n[0-9]+$'")


def test_database_id_rejects_double_hyphen() -> None:
    """A database id may not contain `--`."""
    body = {**minimal_body(), "id": "store--front"}
    assert paths(body) == ["id"]


# --- nodes and ports ---------------------------------------------------------------------


def test_node_names_unique() -> None:
    """A repeated node name is reported at the second node's name."""
    body = minimal_body(nodes=[{"name": "n1"}, {"name": "n2"}, {"name": "n1"}])
    assert message_at(body, "spec.nodes[2].name") == "duplicate node name n1 (also nodes[0])"


def test_same_port_on_several_nodes_is_left_to_placement() -> None:
    """Spec validation accepts one fixed port on several nodes, own or inherited: a port need
    only be unique per host, which only placement knows (see test_host_ports)."""
    for body in (
        minimal_body(nodes=[{"name": "n1", "port": 6001}, {"name": "n2", "port": 6001}]),
        minimal_body(port=5432, nodes=[{"name": "n1"}, {"name": "n2"}]),
    ):
        assert len(parse_database_request(msgspec.json.encode(body)).spec.nodes) == 2


def test_zero_ports_may_repeat() -> None:
    """Port 0 (pick a free port) may be used by every node."""
    body = minimal_body(nodes=[{"name": "n1", "port": 0}, {"name": "n2"}])
    assert len(parse_database_request(msgspec.json.encode(body)).spec.nodes) == 2


def test_source_node_must_exist() -> None:
    """`source_node` must name a node of the same spec."""
    body = minimal_body(nodes=[{"name": "n1"}, {"name": "n2", "source_node": "n3"}])
    path = "spec.nodes[1].source_node"
    assert message_at(body, path) == "node n3 is not a node of this spec"


def test_source_node_not_itself() -> None:
    """A node cannot be its own source_node."""
    body = minimal_body(nodes=[{"name": "n1", "source_node": "n1"}])
    assert paths(body) == ["spec.nodes[0].source_node"]


def test_source_node_exclusive_with_restore_config() -> None:
    """A node cannot have both source_node and restore_config."""
    node = {"name": "n2", "source_node": "n1", "restore_config": restore_config()}
    body = minimal_body(nodes=[{"name": "n1"}, node])
    assert "exclusive" in message_at(body, "spec.nodes[1].source_node")


def test_host_ids_at_most_five() -> None:
    """A node has at most five instances: one host id each."""
    body = minimal_body(nodes=[{"name": "n1", "host_ids": ["a", "b", "c", "d", "e", "f"]}])
    assert message_at(body, "spec.nodes[0].host_ids") == "expected at most 5 items"


def test_host_ids_distinct() -> None:
    """A node has one instance per host: a host named twice is refused at the second."""
    body = minimal_body(nodes=[{"name": "n1", "host_ids": ["a", "b", "a"]}])
    assert "named twice" in message_at(body, "spec.nodes[0].host_ids[2]")


# --- backup_config -----------------------------------------------------------------------


def test_repository_ids_unique() -> None:
    """Two repositories with the same effective id are told to set `id`."""
    s3 = {"type": "s3", "s3_bucket": "bucket", "s3_region": "r"}
    body = minimal_body(backup_config={"repositories": [s3, {**s3, "id": "s3"}, {**s3, "id": "b"}]})
    message = message_at(body, "spec.backup_config.repositories[1].id")
    assert "duplicate repository id s3" in message
    assert "set `id`" in message


def test_schedule_ids_unique() -> None:
    """Two schedules with the same id are reported at the second one's id."""
    schedule = {"id": "nightly", "type": "full", "cron_expression": "0 1 * * *"}
    body = minimal_body(backup_config={**posix_backup(), "schedules": [schedule, schedule]})
    assert paths(body) == ["spec.backup_config.schedules[1].id"]


@pytest.mark.parametrize(
    "expression",
    ["0 1 * *", "0 0 1 * * *", "@every 1h", "@sometimes", "61 * * * *", "0 0 * * funday"],
)
def test_cron_expression_invalid(expression: str) -> None:
    """A cron expression must be a valid, firing, 5-field croniter expression."""
    schedule = {"id": "s", "type": "full", "cron_expression": expression}
    node = {"name": "n1", "backup_config": {**posix_backup(), "schedules": [schedule]}}
    assert paths(minimal_body(nodes=[node])) == [
        "spec.nodes[0].backup_config.schedules[0].cron_expression"
    ]


def test_posix_base_path_required() -> None:
    """A posix repository needs a base_path."""
    body = minimal_body(backup_config={"repositories": [{"type": "posix"}]})
    path = "spec.backup_config.repositories[0].base_path"
    assert message_at(body, path) == "required field for posix and cifs repositories"


@pytest.mark.parametrize(
    "base_path", ["backups", "/backups/../etc", "/backups//x", "/backups/", "/./b", "", "/"]
)
def test_posix_base_path_absolute_and_normalised(base_path: str) -> None:
    """A posix base_path must be absolute, normalised and not the root directory."""
    body = minimal_body(backup_config=posix_backup(base_path=base_path))
    assert paths(body) == ["spec.backup_config.repositories[0].base_path"]


def test_object_store_base_path_normalised_but_root_allowed() -> None:
    """An s3 base_path may be `/` but must still be normalised."""
    s3 = {"type": "s3", "s3_bucket": "bucket", "s3_region": "r"}
    ok = minimal_body(backup_config={"repositories": [{**s3, "base_path": "/"}]})
    assert parse_database_request(msgspec.json.encode(ok)).spec.backup_config is not None
    bad = minimal_body(backup_config={"repositories": [{**s3, "base_path": "/a/../b"}]})
    assert paths(bad) == ["spec.backup_config.repositories[0].base_path"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("s3_endpoint", "localhost\nrepo1-path=/etc"),
        ("s3_region", "us-east-1\r"),
        ("s3_key", "key\0"),
    ],
)
def test_repository_strings_are_ini_safe(field: str, value: str) -> None:
    """No repository string may contain a newline, CR or NUL."""
    s3 = {"type": "s3", "s3_bucket": "bucket", "s3_region": "r", field: value}
    body = minimal_body(backup_config={"repositories": [s3]})
    path = f"spec.backup_config.repositories[0].{field}"
    assert message_at(body, path) == "must not contain a newline or NUL"


def test_custom_option_value_is_ini_safe() -> None:
    """A custom option value with a newline is rejected at the option's path."""
    body = minimal_body(
        backup_config=posix_backup(custom_options={"compress-level": "3\npg1-path=/"})
    )
    path = "spec.backup_config.repositories[0].custom_options.compress-level"
    assert message_at(body, path) == "must not contain a newline or NUL"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("Compress", "option name must be lowercase letters and digits joined by single hyphens"),
        ("a--b", "option name must be lowercase letters and digits joined by single hyphens"),
        ("a=b", "option name must not contain '='"),
        ("a\nb", "must not contain a newline or NUL"),
        ("repo-", "option name is missing after 'repo-'"),
    ],
)
def test_custom_option_names(key: str, message: str) -> None:
    """Custom option names are lowercase words joined by hyphens, never `=` or a newline."""
    body = minimal_body(backup_config=posix_backup(custom_options={key: "1"}))
    path = f"spec.backup_config.repositories[0].custom_options.{key}"
    assert message_at(body, path) == message


@pytest.mark.parametrize(
    "key",
    [
        *("repo-path", "path", "repo-host", "repo-host-user", "host-config", "type"),
        *("repo-cipher-pass", "cipher-type", "repo-s3-key", "s3-key-secret", "repo-s3-token"),
        *("repo-gcs-key", "azure-key", "repo-s3-bucket", "s3-endpoint", "repo-s3-region"),
        *("repo-azure-account", "azure-container", "repo-gcs-bucket", "gcs-endpoint"),
        *("repo-storage-port", "storage-ca-file", "repo-storage-ca-path", "storage-verify-tls"),
        *("repo-retention-full", "retention-full-type", "repo-retention-diff", "stanza"),
        *("config", "config-path", "lock-path", "log-path", "spool-path", "pg1-path", "pg"),
        *("repo", "exclude", "archive-mode", "set", "target", "target-action", "link-all"),
        *("link-map", "tablespace-map", "tablespace-map-all", "db-include", "db-exclude"),
        *("recovery-option", "cmd", "cmd-ssh", "delta", "force", "neutral-umask"),
    ],
)
def test_managed_custom_options_refused(key: str) -> None:
    """Options the control plane sets itself (paths, hosts, secrets, stanza…), or that
    pgBackRest would not read from a config file, are refused with a reason naming them."""
    body = minimal_body(backup_config=posix_backup(custom_options={key: "x"}))
    path = f"spec.backup_config.repositories[0].custom_options.{key}"
    message = message_at(body, path)
    assert key in message
    reasons = ("managed by the control plane", "carries a secret", "command line only", "has no")
    assert any(reason in message for reason in reasons), message


@pytest.mark.parametrize(
    "key",
    ["compress-level", "compress-type", "process-max", "archive-async", "repo-bundle"],
)
def test_tuning_custom_options_allowed(key: str) -> None:
    """Ordinary tuning options, global or repo-scoped, are accepted."""
    body = minimal_body(backup_config=posix_backup(custom_options={key: "2"}))
    request = parse_database_request(msgspec.json.encode(body))
    assert request.spec.backup_config is not None
    assert request.spec.backup_config.repositories[0].custom_options == {key: "2"}


def test_global_custom_options_must_agree() -> None:
    """Two repositories setting one global option to different values conflict."""
    first = {"type": "posix", "base_path": "/a", "custom_options": {"process-max": "2"}}
    same = {"type": "posix", "id": "b", "base_path": "/b", "custom_options": {"process-max": "2"}}
    other = {"type": "posix", "id": "c", "base_path": "/c", "custom_options": {"process-max": "4"}}
    scoped = {"type": "posix", "id": "d", "base_path": "/d", "custom_options": {"repo-bundle": "n"}}
    body = minimal_body(backup_config={"repositories": [first, same, other, scoped]})
    path = "spec.backup_config.repositories[2].custom_options.process-max"
    assert message_at(body, path) == (
        "global option process-max is set to a different value in repositories[0]"
    )


def test_storage_ca_file_absolute() -> None:
    """A repository's storage_ca_file must be an absolute path."""
    body = minimal_body(backup_config=posix_backup(storage_ca_file="ca.pem"))
    assert paths(body) == ["spec.backup_config.repositories[0].storage_ca_file"]


# --- users and postgresql_conf -----------------------------------------------------------


def test_usernames_unique() -> None:
    """A repeated username is reported at the second user."""
    body = minimal_body(database_users=[{"username": "app"}, {"username": "app"}])
    assert (
        message_at(body, "spec.database_users[1].username")
        == "duplicate username app (also database_users[0])"
    )


@pytest.mark.parametrize("username", ["postgres", "controlplane", "pg_monitor"])
def test_reserved_usernames(username: str) -> None:
    """postgres, controlplane and pg_* roles cannot be declared."""
    body = minimal_body(database_users=[{"username": username}])
    assert message_at(body, "spec.database_users[0].username") == f"username {username} is reserved"


def test_role_attributes_known() -> None:
    """Role attributes must be known PostgreSQL role options (upper case)."""
    body = minimal_body(
        database_users=[{"username": "a", "attributes": ["LOGIN", "login", "PASSWORD"]}]
    )
    assert paths(body) == [
        "spec.database_users[0].attributes[1]",
        "spec.database_users[0].attributes[2]",
    ]


def test_role_attributes_not_contradictory() -> None:
    """An attribute and its NO… opposite cannot both be given."""
    body = minimal_body(
        database_users=[{"username": "a", "attributes": ["NOLOGIN", "CREATEDB", "LOGIN"]}]
    )
    path = "spec.database_users[0].attributes[2]"
    assert message_at(body, path) == "attribute LOGIN contradicts NOLOGIN"


def test_one_db_owner() -> None:
    """At most one user owns the database."""
    users = [{"username": n, "db_owner": True} for n in ("a", "b", "c")]
    body = minimal_body(database_users=users)
    assert paths(body) == ["spec.database_users[1].db_owner", "spec.database_users[2].db_owner"]


@pytest.mark.parametrize("key", ["Max_connections", "1abc", "a-b", "a" * 65, "x\n"])
def test_postgresql_conf_key_format(key: str) -> None:
    """postgresql_conf keys are lowercase GUC names of at most 64 characters."""
    body = minimal_body(postgresql_conf={key: 1})
    assert paths(body) == [f"spec.postgresql_conf.{key}"]


_MANAGED = "is managed by the control plane"
_LIBRARY = "loads server code from the host"
_COMMAND = "runs a shell command on the host"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        *((k, _MANAGED) for k in ("port", "listen_addresses", "unix_socket_directories")),
        *((k, _MANAGED) for k in ("unix_socket_permissions", "data_directory", "hba_file")),
        *((k, _MANAGED) for k in ("ident_file", "config_file", "external_pid_file")),
        *((k, _MANAGED) for k in ("archive_mode", "primary_conninfo", "primary_slot_name")),
        *((k, _MANAGED) for k in ("wal_level", "cluster_name", "recovery_target_time")),
        *((k, _MANAGED) for k in ("hot_standby", "track_commit_timestamp")),
        *((k, "would read another file") for k in ("include", "include_dir", "include_if_exists")),
        *((k, _COMMAND) for k in ("archive_command", "restore_command", "recovery_end_command")),
        *((k, _COMMAND) for k in ("archive_cleanup_command", "ssl_passphrase_command")),
        *((k, _LIBRARY) for k in ("archive_library", "shared_preload_libraries", "jit_provider")),
        *((k, _LIBRARY) for k in ("local_preload_libraries", "dynamic_library_path")),
        *((k, "is a path outside") for k in ("ssl_cert_file", "krb_server_keyfile")),
    ],
)
def test_postgresql_conf_refused_keys(key: str, reason: str) -> None:
    """Settings the control plane renders itself, or that reach outside the node (paths,
    libraries, shell commands, includes), are refused whatever their value, saying why."""
    body = minimal_body(postgresql_conf={key: "x"})
    path = f"spec.postgresql_conf.{key}"
    assert message_at(body, path).startswith(f"parameter {key} {reason}")


def test_postgresql_conf_value_single_line() -> None:
    """A string setting cannot contain a newline (it would add settings of its own)."""
    body = minimal_body(postgresql_conf={"work_mem": "4MB\nport = 1"})
    assert message_at(body, "spec.postgresql_conf.work_mem") == "must not contain a newline or NUL"


# --- restore_config ----------------------------------------------------------------------


def restore_problem(**options: str) -> list[Any]:
    """Problems of a database-level restore_config with the given restore_options."""
    return problems(minimal_body(restore_config=restore_config(**options)))


@pytest.mark.parametrize(
    "key",
    ["repo", "repo1-path", "pg1-path", "stanza", "target-action", "delta", "force", "archive_mode"],
)
def test_restore_option_managed(key: str) -> None:
    """Restore options the workflow decides are refused as managed."""
    found = restore_problem(**{key: "x"})
    assert found == [
        {
            "path": f"spec.restore_config.restore_options.{key}",
            "message": f"option {key.replace('_', '-')} is managed by the control plane",
        }
    ]


def test_restore_option_unknown() -> None:
    """An option outside the allowed list is an unknown restore option."""
    [found] = restore_problem(buffer_size="1MB")
    assert found["path"] == "spec.restore_config.restore_options.buffer_size"
    assert found["message"].startswith("unknown restore option buffer-size")


def test_restore_option_given_twice() -> None:
    """`target_exclusive` and `target-exclusive` are the same option."""
    found = restore_problem(
        type="xid", target="100", target_exclusive="y", **{"target-exclusive": "n"}
    )
    assert [f["path"] for f in found] == ["spec.restore_config.restore_options.target-exclusive"]


def test_restore_type_values() -> None:
    """type must be one of pgBackRest's supported recovery types, without target noise."""
    found = restore_problem(type="standby", target="x")
    assert [f["path"] for f in found] == ["spec.restore_config.restore_options.type"]


@pytest.mark.parametrize("restore_type", ["time", "xid", "lsn", "name"])
def test_restore_target_required(restore_type: str) -> None:
    """time, xid, lsn and name restores need a target."""
    [found] = restore_problem(type=restore_type)
    assert found == {
        "path": "spec.restore_config.restore_options.target",
        "message": f"required for type {restore_type}",
    }


@pytest.mark.parametrize("restore_type", ["default", "immediate", None])
def test_restore_target_forbidden_without_target_type(restore_type: str | None) -> None:
    """A target is refused for default and immediate restores."""
    options = {"target": "0/1"} if restore_type is None else {"type": restore_type, "target": "0/1"}
    assert [f["path"] for f in restore_problem(**options)] == [
        "spec.restore_config.restore_options.target"
    ]


def test_naive_time_target_refused() -> None:
    """A time target without a timezone is refused with a clear message."""
    [found] = restore_problem(type="time", target="2025-05-05 09:38:52")
    assert found["message"] == "time target needs a timezone"


@pytest.mark.parametrize(
    "target", ["yesterday", "2025-05-05", "2025-13-05 09:38:52Z", "05/05/2025 09:00 +00"]
)
def test_bad_time_target_refused(target: str) -> None:
    """A time target must be a real timestamp."""
    assert [f["path"] for f in restore_problem(type="time", target=target)] == [
        "spec.restore_config.restore_options.target"
    ]


@pytest.mark.parametrize(
    ("restore_type", "target"),
    [("xid", "12a"), ("xid", "-1"), ("lsn", "0/ZZ"), ("lsn", "123456789/1"), ("name", "x" * 64)],
)
def test_bad_targets_refused(restore_type: str, target: str) -> None:
    """xid targets are digits, lsn targets hex/hex, names at most 63 characters."""
    assert [f["path"] for f in restore_problem(type=restore_type, target=target)] == [
        "spec.restore_config.restore_options.target"
    ]


@pytest.mark.parametrize(
    ("restore_type", "target"),
    [("xid", "1234"), ("lsn", "0/3000060"), ("lsn", "AB/cd"), ("name", "before-upgrade")],
)
def test_good_targets_accepted(restore_type: str, target: str) -> None:
    """Well-formed xid, lsn and name targets are accepted."""
    body = minimal_body(restore_config=restore_config(type=restore_type, target=target))
    assert parse_database_request(msgspec.json.encode(body)).spec.restore_config is not None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("set", "20250505-093852"),
        ("set", "20250505-093852F_20250506-093852F"),
        ("target-exclusive", "yes"),
        ("target-timeline", "next"),
        ("process-max", "0"),
        ("process-max", "65"),
        ("process-max", "four"),
    ],
)
def test_restore_option_values(key: str, value: str) -> None:
    """set, target-exclusive, target-timeline and process-max values are checked."""
    options = {"type": "xid", "target": "5", key: value}
    assert [f["path"] for f in restore_problem(**options)] == [
        f"spec.restore_config.restore_options.{key}"
    ]


def test_restore_option_good_values() -> None:
    """Labels, timelines and process-max within range are accepted."""
    options = {
        "type": "xid",
        "target": "5",
        "set": "20250505-093852F_20250506-010203I",
        "target_timeline": "latest",
        "target-exclusive": "y",
        "process_max": "64",
    }
    body = minimal_body(restore_config=restore_config(**options))
    assert parse_database_request(msgspec.json.encode(body)).spec.restore_config is not None


def test_target_exclusive_needs_exclusive_type() -> None:
    """target-exclusive only applies to time, xid and lsn restores."""
    [found] = restore_problem(type="immediate", target_exclusive="y")
    assert found["path"] == "spec.restore_config.restore_options.target_exclusive"


def test_restore_option_value_ini_safe() -> None:
    """A restore option value with a newline is rejected."""
    [found] = restore_problem(set="latest\nrepo1-path=/")
    assert found == {
        "path": "spec.restore_config.restore_options.set",
        "message": "must not contain a newline or NUL",
    }


def test_node_restore_config_validated() -> None:
    """A node-level restore_config is checked with its own path."""
    node = {"name": "n1", "restore_config": restore_config(type="lsn")}
    body = minimal_body(nodes=[node])
    assert paths(body) == ["spec.nodes[0].restore_config.restore_options.target"]


def test_restore_repository_validated() -> None:
    """A restore_config's repository gets the same repository checks."""
    config = restore_config()
    config["repository"] = {
        "type": "posix",
        "base_path": "/x/",
        "custom_options": {"repo-path": "/"},
    }
    body = minimal_body(restore_config=config)
    assert paths(body) == [
        "spec.restore_config.repository.base_path",
        "spec.restore_config.repository.custom_options.repo-path",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-05-05 09:38:52-04", datetime(2025, 5, 5, 13, 38, 52, tzinfo=UTC)),
        ("2025-05-05T13:38:52Z", datetime(2025, 5, 5, 13, 38, 52, tzinfo=UTC)),
        ("2025-05-05 13:38:52+00:00", datetime(2025, 5, 5, 13, 38, 52, tzinfo=UTC)),
        ("2025-05-05 13:38:52+0000", datetime(2025, 5, 5, 13, 38, 52, tzinfo=UTC)),
        ("2025-05-05 15:08:52.25+0130", datetime(2025, 5, 5, 13, 38, 52, 250000, tzinfo=UTC)),
        ("2025-05-05 13:38:52 UTC", datetime(2025, 5, 5, 13, 38, 52, tzinfo=UTC)),
    ],
)
def test_parse_time_target(text: str, expected: datetime) -> None:
    """Time targets with an explicit zone parse to the same aware UTC instant."""
    parsed = parse_time_target(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC
    assert parsed.utcoffset() == timedelta(0)


def test_parse_time_target_naive() -> None:
    """parse_time_target refuses a naive timestamp."""
    with pytest.raises(ValueError, match="time target needs a timezone"):
        parse_time_target("2025-05-05 09:38:52")


def test_normalise_restore_options() -> None:
    """Underscores in restore option keys become pgBackRest's hyphens; values are kept."""
    assert normalise_restore_options({"target_exclusive": "y", "set": "latest"}) == {
        "target-exclusive": "y",
        "set": "latest",
    }


# --- backup and restore requests ---------------------------------------------------------


def test_backup_request_defaults() -> None:
    """An empty backup request is a full backup without annotations or repository."""
    request = parse_backup_request(b"{}")
    assert request == BackupRequest(type="full", annotations={}, repository_id=None)


def test_backup_request_reserved_annotation() -> None:
    """The controlplane_task_id annotation is reserved."""
    body = {"annotations": {"controlplane_task_id": "x", "reason": "upgrade"}}
    path = "annotations.controlplane_task_id"
    assert message_at(body, path, parse_backup_request) == (
        "annotation controlplane_task_id is reserved for the control plane"
    )


def test_backup_request_annotation_shape() -> None:
    """Annotation keys follow a pattern, values are short and single-line."""
    body = {
        "type": "weekly",
        "annotations": {"Bad Key": "x", "long": "v" * 257, "multi": "a\nb", "ok.key-1": "fine"},
        "repository_id": "S3",
    }
    assert paths(body, parse_backup_request) == [
        "type",
        "annotations.Bad Key",
        "annotations.long",
        "repository_id",
    ]
    assert paths({"annotations": {"multi": "a\nb"}}, parse_backup_request) == ["annotations.multi"]


def test_backup_request_annotation_count() -> None:
    """At most 16 annotations are accepted."""
    body = {"annotations": {f"k{i}": "v" for i in range(17)}}
    assert message_at(body, "annotations", parse_backup_request) == "expected at most 16 entries"


def test_restore_request_parses() -> None:
    """A restore request with targets and a pre-restore backup parses."""
    body = {
        "restore_config": restore_config(type="immediate"),
        "target_nodes": ["n1", "n2"],
        "pre_restore_backup": True,
    }
    request = parse_restore_request(msgspec.json.encode(body))
    assert isinstance(request, RestoreRequest)
    assert request.target_nodes == ["n1", "n2"]
    assert request.pre_restore_backup is True


def test_restore_request_defaults_to_all_nodes() -> None:
    """Without target_nodes a restore request targets every node."""
    request = parse_restore_request(msgspec.json.encode({"restore_config": restore_config()}))
    assert request.target_nodes == []
    assert request.pre_restore_backup is False


def test_restore_request_target_nodes_unique_and_checked() -> None:
    """target_nodes are unique node names, and the restore_config gets restore checks."""
    body = {
        "restore_config": restore_config(type="time"),
        "target_nodes": ["n1", "n1", "x"],
    }
    assert paths(body, parse_restore_request) == ["target_nodes[2]"]
    body["target_nodes"] = ["n1", "n1"]
    assert paths(body, parse_restore_request) == [
        "restore_config.restore_options.target",
        "target_nodes[1]",
    ]


def test_restore_request_target_nodes_bounded() -> None:
    """At most 16 target nodes may be named."""
    body = {"restore_config": restore_config(), "target_nodes": [f"n{i}" for i in range(17)]}
    assert paths(body, parse_restore_request) == ["target_nodes"]


def test_database_request_type() -> None:
    """parse_database_request returns the DatabaseRequest model."""
    assert isinstance(parse_database_request(msgspec.json.encode(minimal_body())), DatabaseRequest)


def leaf_paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position (as a key/index tuple) inside a decoded JSON document."""
    found: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += leaf_paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += leaf_paths(value, (*prefix, index))
    return found


def test_any_junk_value_is_a_client_error() -> None:
    """Replacing any value of a valid spec with junk yields InvalidInputError, never a crash."""
    junk: list[Any] = [None, [1], {"a": 1}, -1.5, "\n"]
    for position in leaf_paths(full_body()):
        for value in junk:
            body = full_body()
            parent = body
            for step in position[:-1]:
                parent = parent[step]
            parent[position[-1]] = value
            try:
                parse_database_request(msgspec.json.encode(body))
            except InvalidInputError as exc:
                assert exc.errors, (position, value)
