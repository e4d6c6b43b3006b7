"""pgEdge's spec fields here: client auth rules, resources, versions, custom option scope,
backup options and the node-level postgresql_conf merge."""

from __future__ import annotations

import pytest

from controlplane.orchestrator.hba import client_hba, client_ident
from controlplane.pgbackrest.command import backup_argv
from controlplane.pgbackrest.options import custom_option_problem, repository_option
from controlplane.spec.client_auth import hba_rule_problem
from controlplane.spec.models import DatabaseSpec, NodeSpec, node_postgresql_conf
from controlplane.spec.resources import check_postgres_version, memory_bytes, nano_cpus
from controlplane.system.postgres import hba

NORMAL = hba("test")


def test_user_hba_rules_sit_between_superuser_rules_and_catch_all() -> None:
    """The spec's rules come after rules for the superuser and before everyone else's."""
    text = client_hba(NORMAL, fenced=False, user_rules=["host all all 127.0.0.1/32 reject"])
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    user = lines.index("host all all 127.0.0.1/32 reject")
    assert all(line.split()[2] == "postgres" for line in lines[:user])
    assert len(lines[:user]) == len(lines[user + 1 :]) == 6


def test_fenced_hba_leaves_user_rules_out() -> None:
    """While fenced only the superuser logs in: the spec's rules are not written."""
    text = client_hba(NORMAL, fenced=True, user_rules=["host all app 10.0.0.0/8 trust"])
    assert "app" not in text
    assert client_hba(NORMAL, fenced=False) == NORMAL


def test_ident_file_holds_the_spec_maps() -> None:
    """pg_ident.conf is the spec's maps, one per line."""
    assert client_ident(["m CN=alice alice"]).splitlines()[1:] == ["m CN=alice alice"]


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ("host all all 10.0.0.0/8 scram-sha-256", None),
        ("hostssl all alice 0.0.0.0/0 cert clientcert=verify-full map=ssl_users", None),
        ("host all all 10.0.0.1 255.255.255.255 md5", None),
        ("local all app peer", None),
        ("host all all 10.0.0.0/33 md5", "invalid address"),
        ("host all all 10.0.0.1 md5", "netmask"),
        ("host all all 10.0.0.0/8 cert", "hostssl"),
        ("host all all 10.0.0.0/8 ldap", "ldapserver"),
        ("hots all all 10.0.0.0/8 md5", "unknown connection type"),
        ("host all all 10.0.0.0/8 magic", "unknown authentication method"),
        ("include_dir conf.d", "PostgreSQL 16"),
        ("host all all\n10.0.0.0/8 md5", "newline"),
        ("  ", "empty rule"),
    ],
)
def test_hba_rules_are_checked_like_postgres_15(rule: str, words: str | None) -> None:
    """A rule the server would refuse (so the whole file) is refused up front with why."""
    reason = hba_rule_problem(rule)
    if words is None:
        assert reason is None
    else:
        assert reason is not None and words in reason


@pytest.mark.parametrize(
    ("text", "size"),
    [("500M", 500_000_000), ("16GiB", 16 * 1024**3), ("512Mi", 512 * 1024**2), ("1G", 10**9)],
)
def test_memory_in_si_and_iec_notation(text: str, size: int) -> None:
    """pgEdge's memory strings read as bytes."""
    assert memory_bytes(text) == size


def test_cpus_as_nano_cpus() -> None:
    """`500m`, `0.5` and `2` as Docker's nano_cpus."""
    assert nano_cpus("500m") == nano_cpus("0.5") == 500_000_000
    assert nano_cpus("2") == 2_000_000_000


def test_postgres_version_names_what_runs() -> None:
    """15 and 15.x run; another major is refused naming the one that runs."""
    assert check_postgres_version("15", "p") == check_postgres_version("15.13", "p") == []
    (error,) = check_postgres_version("17.6", "p")
    assert "runs PostgreSQL 15 only" in error["message"]


def test_custom_options_are_scoped_from_pgbackrests_option_list() -> None:
    """pgEdge's bare repository option names are repository-scoped; globals stay global; a
    numbered or command-line-only option is refused with why."""
    assert repository_option("s3-kms-key-id") == "s3-kms-key-id"
    assert repository_option("repo-storage-upload-chunk-size") == "storage-upload-chunk-size"
    assert repository_option("compress-type") is None
    assert custom_option_problem("compress-type", "lz4") is None
    assert "numbers the repositories" in str(custom_option_problem("repo2-bundle", "y"))
    assert "command line only" in str(custom_option_problem("target-action", "promote"))
    assert "no option" in str(custom_option_problem("made-up", "1"))


def test_backup_options_reach_the_argv_and_are_allow_listed() -> None:
    """Allowed backup_options become arguments of that backup; others never do."""
    argv = backup_argv("/c", type="full", task_id="t", extra={"archive-check": "n"})
    assert "--archive-check=n" in argv
    with pytest.raises(ValueError, match="repo-path"):
        backup_argv("/c", type="full", task_id="t", extra={"repo-path": "/x"})


def test_node_postgresql_conf_is_merged_over_the_databases() -> None:
    """A node's setting wins; the database's others stay."""
    node = NodeSpec(name="n1", postgresql_conf={"work_mem": "8MB"})
    spec = DatabaseSpec(
        database_name="app",
        postgresql_conf={"work_mem": "4MB", "max_connections": 50},
        nodes=[node],
    )
    assert node_postgresql_conf(spec, node) == {"work_mem": "8MB", "max_connections": 50}
