"""Patroni member configuration: what render_config puts where, and what it refuses."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import yaml

from controlplane.orchestrator.patroni import (
    ClusterView,
    Credentials,
    LogicalSlot,
    PatroniMember,
    adoption_statements,
    dynamic_config,
    render_config,
)

SLOT = LogicalSlot(database="app", plugin="pglogical_output")
ARCHIVE = "pgbackrest --stanza=db --pg1-path=/srv/n1a/pgdata archive-push %p"
RESTORE = "pgbackrest --stanza=db --pg1-path=/srv/n1a/pgdata --delta restore"


def member(**overrides: Any) -> PatroniMember:
    fields: dict[str, Any] = {
        "scope": "storefront-n1",
        "name": "n1a",
        "rest_host": "127.0.0.1",
        "rest_port": 8008,
        "rest_auth": Credentials(username="patroni", password="rest-secret"),
        "etcd_hosts": ("127.0.0.1:2379", "127.0.0.1:2381"),
        "pg_host": "127.0.0.1",
        "pg_port": 5432,
        "data_dir": "/srv/n1a/pgdata",
        "bin_dir": "/usr/lib/postgresql/15/bin",
        "socket_dir": "/run/cp",
        "pgpass": "/srv/n1a/pgpass",
        "superuser": Credentials(username="postgres", password="su-secret"),
        "replication": Credentials(username="replicator", password="repl-secret"),
        "rewind": Credentials(username="rewinder", password="rewind-secret"),
        "parameters": {"wal_level": "logical", "shared_preload_libraries": "pglogical"},
        "archive_command": ARCHIVE,
        "initializes_cluster": True,
    }
    fields.update(overrides)
    return PatroniMember(**fields)


def parsed(m: PatroniMember) -> dict[str, Any]:
    """The rendered text as Patroni reads it (YAML), checked to be plain JSON too."""
    text = render_config(m)
    as_yaml: dict[str, Any] = yaml.safe_load(text)
    assert as_yaml == json.loads(text)
    return as_yaml


def test_archive_command_is_local_to_the_member() -> None:
    """archive_command names the member's own data directory, so it never enters the DCS."""
    config = parsed(member())
    assert config["postgresql"]["parameters"]["archive_command"] == ARCHIVE
    assert "archive_command" not in config["bootstrap"]["dcs"]["postgresql"]["parameters"]
    assert "archive_command" not in json.dumps(config["bootstrap"])


def test_cluster_wide_settings_go_to_the_dcs_over_patronis_needs() -> None:
    """Caller settings land in bootstrap.dcs, on top of what Patroni needs for rewind/slots."""
    config = parsed(member(parameters={"wal_level": "logical", "max_replication_slots": 20}))
    dcs = config["bootstrap"]["dcs"]
    assert dcs["postgresql"]["parameters"] == {
        "hot_standby": "on",
        "wal_log_hints": "on",
        "max_wal_senders": 10,
        "max_replication_slots": 20,
        "wal_keep_size": "128MB",
        "wal_level": "logical",
    }
    assert dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["postgresql"]["use_slots"] is True
    local = config["postgresql"]["parameters"]
    assert local == {"unix_socket_directories": "/run/cp", "archive_command": ARCHIVE}


def test_timeouts_failsafe_and_synchronous_mode() -> None:
    """A lost leader is replaced within ttl + loop_wait; failsafe and sync mode are in the DCS."""
    dcs = parsed(member(synchronous_mode=True))["bootstrap"]["dcs"]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (20, 2, 8)
    assert dcs["ttl"] + dcs["loop_wait"] < 30
    assert dcs["primary_start_timeout"] + 2 * dcs["loop_wait"] < 30
    assert dcs["postgresql"]["remove_data_directory_on_rewind_failure"] is True
    assert dcs["failsafe_mode"] is True
    assert dcs["synchronous_mode"] is True
    assert parsed(member())["bootstrap"]["dcs"]["synchronous_mode"] is False


def test_permanent_slots_are_cluster_wide() -> None:
    """Permanent logical slots are rendered in the DCS shape Patroni keeps on every member."""
    config = parsed(member(slots={"pgl_app_n1_sub_n2": SLOT}))
    assert config["bootstrap"]["dcs"]["slots"] == {
        "pgl_app_n1_sub_n2": {"type": "logical", "database": "app", "plugin": "pglogical_output"}
    }
    assert "slots" not in parsed(member())["bootstrap"]["dcs"]
    assert dynamic_config(member(slots={"s": SLOT}))["slots"]["s"]["type"] == "logical"


def test_pg_hba_is_left_to_the_control_plane() -> None:
    """No pg_hba list anywhere, so Patroni never rewrites the file; hba_file only when given."""
    config = parsed(member())
    text = render_config(member())
    assert "pg_hba" not in text
    assert "hba_file" not in config["postgresql"]["parameters"]
    with_file = parsed(member(hba_file="/srv/n1a/pg_hba.conf"))
    assert with_file["postgresql"]["parameters"]["hba_file"] == "/srv/n1a/pg_hba.conf"


def test_replicas_are_created_from_pgbackrest_first_when_it_can_restore() -> None:
    """pgBackRest restores first (its own command, data kept for --delta), pg_basebackup next."""
    plain = parsed(member())["postgresql"]
    assert plain["create_replica_methods"] == ["basebackup"]
    assert "pgbackrest" not in plain
    restoring = parsed(member(pgbackrest_restore_command=RESTORE))["postgresql"]
    assert restoring["create_replica_methods"] == ["pgbackrest", "basebackup"]
    assert restoring["pgbackrest"] == {"command": RESTORE, "keep_data": True, "no_params": True}
    assert restoring["basebackup"] == {"checkpoint": "fast"}


def test_member_identity_rest_auth_and_dcs() -> None:
    """Scope, namespace, REST listen and auth, etcd3 hosts and the three roles are rendered."""
    config = parsed(member(tags={"nofailover": True}))
    assert (config["scope"], config["namespace"], config["name"]) == (
        "storefront-n1",
        "/controlplane/",
        "n1a",
    )
    assert config["restapi"] == {
        "listen": "127.0.0.1:8008",
        "connect_address": "127.0.0.1:8008",
        "authentication": {"username": "patroni", "password": "rest-secret"},
    }
    elsewhere = parsed(member(rest_host="0.0.0.0", rest_connect_host="10.0.0.5"))["restapi"]
    assert (elsewhere["listen"], elsewhere["connect_address"]) == ("0.0.0.0:8008", "10.0.0.5:8008")
    assert config["etcd3"] == {"hosts": ["127.0.0.1:2379", "127.0.0.1:2381"]}
    assert "etcd" not in config
    pg = config["postgresql"]
    assert (pg["listen"], pg["connect_address"]) == ("127.0.0.1:5432", "127.0.0.1:5432")
    assert pg["authentication"]["rewind"] == {"username": "rewinder", "password": "rewind-secret"}
    assert config["tags"] == {"nofailover": True}
    assert config["watchdog"] == {"mode": "off"}


def test_only_the_founding_member_has_a_bootstrap_and_it_never_runs_initdb() -> None:
    """Other members wait for a leader; the founder's bootstrap method refuses to initdb."""
    assert "bootstrap" not in parsed(member(initializes_cluster=False))
    bootstrap = parsed(member())["bootstrap"]
    assert bootstrap["method"] == "controlplane"
    assert "exit 1" in bootstrap["controlplane"]["command"]
    assert bootstrap["controlplane"]["no_params"] is True
    assert "initdb" not in bootstrap


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"ttl": 10, "loop_wait": 2, "retry_timeout": 5}, "exceeds ttl"),
        ({"local_parameters": {"wal_level": "logical"}}, "wal_level can only be set"),
        ({"local_parameters": {"max_connections": 200}}, "max_connections can only be set"),
        ({"parameters": {"archive_command": "true"}}, "archive_command is per member"),
    ],
)
def test_settings_patroni_would_ignore_or_misapply_are_refused(
    overrides: dict[str, Any], words: str
) -> None:
    """Settings Patroni would silently drop or apply on the wrong member raise instead."""
    with pytest.raises(ValueError, match=words):
        member(**overrides)


def test_adoption_statements_create_patronis_roles_without_plaintext() -> None:
    """The roles Patroni would create after its own initdb, with SCRAM verifiers only."""
    statements = adoption_statements(member())
    text = "\n".join(statements)
    for secret in ("su-secret", "repl-secret", "rewind-secret"):
        assert secret not in text
    assert text.count("SCRAM-SHA-256$4096:") == 3
    assert 'ALTER ROLE "replicator" WITH LOGIN REPLICATION' in text
    assert 'ALTER ROLE "rewinder" WITH LOGIN NOSUPERUSER' in text
    assert sum('TO "rewinder"' in s for s in statements) == 4
    with pytest.raises(ValueError, match="not plain"):
        adoption_statements(member(rewind=Credentials(username="x'; drop", password="p")))


def test_cluster_view_decodes_patronis_answer() -> None:
    """GET /cluster's members, roles, lag ("unknown" included) and scheduled switchover."""
    body = {
        "members": [
            {"name": "n1a", "role": "leader", "state": "running", "host": "127.0.0.1",
             "port": 5432, "timeline": 2, "api_url": "http://127.0.0.1:8008/patroni"},
            {"name": "n1b", "role": "sync_standby", "state": "running", "timeline": 2, "lag": 0},
            {"name": "n1c", "role": "replica", "state": "starting", "lag": "unknown"},
        ],
        "scheduled_switchover": {"at": "2030-01-01T00:00:00+00:00", "from": "n1a", "to": "n1b"},
    }  # fmt: skip
    view = msgspec.json.decode(json.dumps(body), type=ClusterView)
    assert view.leader is not None and view.leader.name == "n1a"
    assert [m.name for m in view.replicas] == ["n1b", "n1c"]
    assert [m.lag for m in view.members] == [None, 0, "unknown"]
    assert view.scheduled_switchover is not None
    assert (view.scheduled_switchover.from_, view.scheduled_switchover.to) == ("n1a", "n1b")
