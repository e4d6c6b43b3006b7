"""Repository `custom_options`: which pgBackRest options a user may set, and at what scope.

The rule itself lives next to the renderer (`pgbackrest.options.custom_option_problem`), so
validation accepts exactly what the renderer writes: a key starting with `repo-` is
repository-scoped and rendered as `repo<N>-<rest>`; any other key is a global option. Options
that carry paths, hosts, secrets, indexes (`repo2-…`) or anything the control plane derives
itself are refused, so a spec cannot redirect a repository, leak a credential into a readable
config file or break a restore.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controlplane.pgbackrest.options import (
    REPO_PREFIX,
    custom_option_problem,
    is_repository_scoped,
)
from controlplane.spec.models import Repository
from controlplane.spec.paths import Problem, field_path, item_path, problem

__all__ = [
    "REPO_PREFIX",
    "check_custom_options",
    "check_global_option_conflicts",
    "is_repository_scoped",
    "option_name_problem",
]


def option_name_problem(key: str) -> str | None:
    """Why `key` cannot be a custom option, or None when it may be used."""
    return custom_option_problem(key)


def check_custom_options(options: Mapping[str, str], path: str) -> list[Problem]:
    """Problems with one repository's `custom_options` (keys and values) at `path`."""
    errors: list[Problem] = []
    for key, value in options.items():
        reason = custom_option_problem(key, value)
        if reason is not None:
            errors.append(problem(field_path(path, key), reason))
    return errors


def check_global_option_conflicts(repositories: Sequence[Repository], path: str) -> list[Problem]:
    """Global options set by several repositories of one backup_config must agree.

    Global keys land in one `[global]` section, so two repositories cannot give them
    different values.
    """
    errors: list[Problem] = []
    first_seen: dict[str, tuple[int, str]] = {}
    for index, repository in enumerate(repositories):
        for key, value in repository.custom_options.items():
            if is_repository_scoped(key):
                continue
            if key not in first_seen:
                first_seen[key] = (index, value)
                continue
            other_index, other_value = first_seen[key]
            if other_value != value:
                option_path = field_path(item_path(path, index), f"custom_options.{key}")
                errors.append(
                    problem(
                        option_path,
                        f"global option {key} is set to a different value in "
                        f"repositories[{other_index}]",
                    )
                )
    return errors
