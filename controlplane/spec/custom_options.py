"""Repository `custom_options`: which pgBackRest options a user may set, and at what scope.

The pgBackRest renderer uses the same rule: a key starting with `repo-` is repository-scoped and
rendered as `repo<N>-<rest>`; any other key is a global option. Options that carry paths, hosts,
secrets or anything the control plane derives itself are refused, so a spec cannot redirect a
repository, leak a credential into a readable config file or break a restore.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from controlplane.spec.models import Repository
from controlplane.spec.paths import (
    UNSAFE_TEXT,
    Problem,
    field_path,
    has_control_chars,
    item_path,
    problem,
)

REPO_PREFIX = "repo-"

_OPTION_NAME = re.compile(r"^[a-z0-9-]+$")

# Checked after stripping a leading "repo-": these are set from the repository's own fields.
_MANAGED_REPO_OPTIONS = frozenset(
    {
        "path",
        "type",
        "cipher-pass",
        "cipher-type",
        "s3-bucket",
        "s3-endpoint",
        "s3-region",
        "s3-uri-style",
        "azure-account",
        "azure-container",
        "azure-endpoint",
        "azure-uri-style",
        "gcs-bucket",
        "gcs-endpoint",
        "gcs-key-type",
        "storage-port",
        "storage-ca-file",
        "storage-ca-path",
        "storage-verify-tls",
        "retention-full",
        "retention-full-type",
        "retention-diff",
    }
)
# Secrets must go through the write-only fields, which never reach a config file or a response.
_SECRET_SUFFIXES = ("-key", "-key-secret", "-token", "-pass")

# Global options the control plane owns: instance layout, stanza, restore behaviour.
_MANAGED_GLOBAL_OPTIONS = frozenset(
    {
        "stanza",
        "lock-path",
        "log-path",
        "spool-path",
        "repo",
        "exclude",
        "archive-mode",
        "set",
        "link-all",
        "link-map",
        "tablespace-map",
        "tablespace-map-all",
        "db-include",
        "db-exclude",
        "recovery-option",
        "cmd",
        "cmd-ssh",
        "delta",
        "force",
        "neutral-umask",
    }
)
_MANAGED_GLOBAL_PREFIXES = ("config", "pg", "target")


def is_repository_scoped(key: str) -> bool:
    """True when `key` is rendered per repository (`repo-x` → `repo<N>-x`)."""
    return key.startswith(REPO_PREFIX)


def is_managed_option(key: str) -> bool:
    """True when the control plane sets option `key` itself, so a user may not."""
    name = key.removeprefix(REPO_PREFIX)
    if name in _MANAGED_REPO_OPTIONS or name.startswith("host") or name.endswith(_SECRET_SUFFIXES):
        return True
    if is_repository_scoped(key):
        return False
    return key in _MANAGED_GLOBAL_OPTIONS or key.startswith(_MANAGED_GLOBAL_PREFIXES)


def option_name_problem(key: str) -> str | None:
    """Why `key` cannot be a custom option, or None when it may be used."""
    if has_control_chars(key):
        return UNSAFE_TEXT
    if "=" in key:
        return "option name must not contain '='"
    if not _OPTION_NAME.fullmatch(key):
        return "option name must match ^[a-z0-9-]+$"
    if key == REPO_PREFIX:
        return "option name is missing after 'repo-'"
    if is_managed_option(key):
        if key.endswith(_SECRET_SUFFIXES):
            return (
                f"option {key} is managed by the control plane "
                "(secrets go in the write-only repository fields)"
            )
        return f"option {key} is managed by the control plane"
    return None


def check_custom_options(options: Mapping[str, str], path: str) -> list[Problem]:
    """Problems with one repository's `custom_options` (keys and values) at `path`."""
    errors: list[Problem] = []
    for key, value in options.items():
        key_path = field_path(path, key)
        reason = option_name_problem(key)
        if reason is not None:
            errors.append(problem(key_path, reason))
        elif has_control_chars(value):
            errors.append(problem(key_path, UNSAFE_TEXT))
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
