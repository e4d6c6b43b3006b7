"""Where posix repositories may live: under directories the operator names, never inside the
control plane's own data directory (a tenant's `base_path` would otherwise have the control
plane create directories and write backups wherever it points)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath

from controlplane.spec.models import DatabaseSpec, Repository, RestoreConfig, is_filesystem
from controlplane.spec.paths import Problem, problem


def repositories_of(spec: DatabaseSpec) -> Iterator[tuple[str, Repository]]:
    """Every repository of a spec with its JSON path (backup and restore configs, all levels)."""
    scopes = [("spec.", spec.backup_config, spec.restore_config)]
    scopes += [
        (f"spec.nodes[{i}].", node.backup_config, node.restore_config)
        for i, node in enumerate(spec.nodes)
    ]
    for prefix, backup_config, restore_config in scopes:
        if backup_config is not None:
            for index, repository in enumerate(backup_config.repositories):
                yield f"{prefix}backup_config.repositories[{index}]", repository
        if restore_config is not None:
            yield f"{prefix}restore_config.repository", restore_config.repository


def restore_repository(config: RestoreConfig, path: str) -> Iterator[tuple[str, Repository]]:
    yield f"{path}.repository", config.repository


def check_base_paths(
    repositories: Iterator[tuple[str, Repository]],
    roots: Sequence[PurePosixPath],
    data_dir: PurePosixPath,
) -> list[Problem]:
    """A posix (or cifs) repository's base_path must lie inside one of `roots` and outside the
    control plane's data directory."""
    errors = []
    for path, repository in repositories:
        base = repository.base_path
        if not is_filesystem(repository) or not base or not base.startswith("/"):
            continue  # other checks report a missing or relative base_path
        where = PurePosixPath(base)
        if where == data_dir or data_dir in where.parents:
            errors.append(
                problem(
                    f"{path}.base_path", "must not be inside the control plane's data directory"
                )
            )
        elif not any(where == root or root in where.parents for root in roots):
            errors.append(
                problem(
                    f"{path}.base_path",
                    f"must be inside one of the backup roots the operator allows "
                    f"({', '.join(str(r) for r in roots)}; CONTROLPLANE_BACKUP_ROOTS)",
                )
            )
    return errors
