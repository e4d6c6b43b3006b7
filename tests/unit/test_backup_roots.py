"""Posix repositories only under the operator's backup roots, never in the data directory."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from controlplane.settings import Settings
from controlplane.spec import BackupConfig, DatabaseSpec, NodeSpec, PosixRepository, RestoreConfig
from controlplane.spec.backup_roots import check_base_paths, repositories_of

ROOTS = Settings(backup_roots="/var/backups, /mnt").backup_root_paths
DATA = PurePosixPath("/var/lib/controlplane")


def _spec(base: str, *, node_level: bool = False) -> DatabaseSpec:
    config = BackupConfig(repositories=[PosixRepository(base_path=base)])
    if node_level:
        return DatabaseSpec(database_name="app", nodes=[NodeSpec(name="n1", backup_config=config)])
    return DatabaseSpec(database_name="app", backup_config=config, nodes=[NodeSpec(name="n1")])


@pytest.mark.parametrize("base", ["/var/backups", "/var/backups/cp", "/mnt/nfs/x"])
def test_paths_inside_a_root_are_accepted(base: str) -> None:
    """The root itself and anything below it is fine."""
    assert check_base_paths(repositories_of(_spec(base)), ROOTS, DATA) == []


@pytest.mark.parametrize(
    ("base", "words"),
    [
        ("/etc", "backup roots"),
        ("/var/backupsX", "backup roots"),
        ("/var", "backup roots"),
        ("/var/lib/controlplane", "data directory"),
        ("/var/lib/controlplane/store", "data directory"),
    ],
)
def test_paths_outside_the_roots_or_in_the_data_dir_are_refused(base: str, words: str) -> None:
    """Outside every root, a prefix that is not a parent, or the data directory: refused."""
    roots = [*ROOTS, PurePosixPath("/var/lib")]
    if words == "backup roots":
        roots = ROOTS
    errors = check_base_paths(repositories_of(_spec(base, node_level=True)), roots, DATA)
    assert [e["path"] for e in errors] == ["spec.nodes[0].backup_config.repositories[0].base_path"]
    assert words in errors[0]["message"]


def test_restore_configs_are_checked_too() -> None:
    """A create-from-backup's repository is held to the same roots."""
    spec = DatabaseSpec(
        database_name="app",
        restore_config=RestoreConfig(
            source_database_id="old",
            source_node_name="n1",
            repository=PosixRepository(base_path="/srv"),
        ),
        nodes=[NodeSpec(name="n1")],
    )
    errors = check_base_paths(repositories_of(spec), ROOTS, DATA)
    assert [e["path"] for e in errors] == ["spec.restore_config.repository.base_path"]


def test_roots_must_be_absolute_directories() -> None:
    """A relative root or / is a configuration error, found when the settings are built."""
    for text in ("backups", "/"):
        with pytest.raises(ValueError):
            Settings(backup_roots=text)
