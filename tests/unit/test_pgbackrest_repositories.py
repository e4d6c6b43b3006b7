"""Independent repositories: reading one repository's health from `info --repo=<key>` (recorded
pgBackRest 2.45 answers) and the argv that reads one repository within a bounded time."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.pgbackrest.command import info_argv
from controlplane.pgbackrest.info import (
    RepositoryHealth,
    StanzaInfo,
    parse_info,
    repository_health,
)

DATA = Path(__file__).parent / "data"


def stanza(name: str) -> StanzaInfo:
    return parse_info((DATA / name).read_bytes())[0]


def test_unreadable_posix_repository_is_degraded_with_the_reason() -> None:
    """A repository pgBackRest cannot list (permission denied) is degraded, saying why."""
    health = repository_health(stanza("info_repo2_permission_denied.json"), 2)
    assert health.status == "degraded"
    assert health.message is not None and "[13] Permission denied" in health.message


def test_unreachable_object_store_is_degraded_with_the_reason() -> None:
    """An object store nobody answers at is degraded, with pgBackRest's connection error."""
    health = repository_health(stanza("info_repo2_connection_refused.json"), 2)
    assert health == RepositoryHealth(
        status="degraded",
        message="repository error: [HostConnectError] unable to connect to '127.0.0.1:1': "
        "[111] Connection refused",
    )


@pytest.mark.parametrize(
    ("name", "key", "status"),
    [
        ("info_two_repos.json", 1, "ok"),
        ("info_two_repos.json", 2, "ok"),
        ("info_no_backups.json", 1, "ok"),
        ("info_missing_stanza.json", 1, "missing_stanza"),
        ("info_repo_errors.json", 1, "missing_stanza"),
        ("info_repo_errors.json", 2, "degraded"),
    ],
)
def test_repository_health_per_repository(name: str, key: int, status: str) -> None:
    """Each repository is judged by its own status: empty is fine, a missing stanza is named,
    anything unreadable is degraded."""
    assert repository_health(stanza(name), key).status == status


def test_info_argv_for_one_repository_with_bounded_io() -> None:
    """The catalog reads one repository at a time and bounds pgBackRest's I/O wait."""
    argv = info_argv("/i/pgbackrest.conf", repo=2, io_timeout=5)
    assert argv == [
        "pgbackrest",
        "--config=/i/pgbackrest.conf",
        "--stanza=db",
        "--output=json",
        "--repo=2",
        "--io-timeout=5",
        "info",
    ]
