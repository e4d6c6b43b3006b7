"""pgBackRest option names and values: the checks shared by the config file, the argv and the
spec's `custom_options` (one rule: what validation accepts is exactly what the renderer writes).
"""

from __future__ import annotations

import re

_OPTION_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

# Suffixes of every pgBackRest option that carries a credential (repo-s3-key,
# repo-s3-key-secret, repo-azure-key, repo-gcs-key, repo-cipher-pass, repo-s3-token, …).
# Such values may only travel through the environment (`secret_env`): a config file is
# readable by anyone who can read the instance dir, and argv is visible in `ps`.
_SECRET_SUFFIXES = ("key", "key-secret", "cipher-pass", "token", "pass")

# A custom option starting with this prefix is repository-scoped: rendered `repo<N>-<rest>`.
REPO_PREFIX = "repo-"

# Indexed options (`repo2-…`, `pg1-…`) would reach past the repository that sets them.
_INDEXED_OPTION = re.compile(r"^(repo|pg)[0-9]+-")

# Checked after stripping a leading "repo-": these come from the repository's own fields.
_MANAGED_REPO_OPTIONS = frozenset(
    {
        *("path", "type", "cipher-pass", "cipher-type"),
        *("s3-bucket", "s3-endpoint", "s3-region", "s3-uri-style"),
        *("azure-account", "azure-container", "azure-endpoint", "azure-uri-style"),
        *("gcs-bucket", "gcs-endpoint", "gcs-key-type"),
        *("storage-port", "storage-ca-file", "storage-ca-path", "storage-verify-tls"),
        *("retention-full", "retention-full-type", "retention-diff"),
    }
)

# Global options the control plane owns: instance layout, stanza, what each command does, and
# the console output it reads (the backup label is an info-level line).
_MANAGED_GLOBAL_OPTIONS = frozenset(
    {
        *("stanza", "lock-path", "log-path", "spool-path", "repo", "exclude", "archive-mode"),
        *("set", "link-all", "link-map", "tablespace-map", "tablespace-map-all"),
        *("db-include", "db-exclude", "recovery-option", "cmd", "cmd-ssh", "delta", "force"),
        *("neutral-umask", "online", "output", "annotation", "log-level-console"),
    }
)
_MANAGED_GLOBAL_PREFIXES = ("config", "pg", "target")


def is_secret_option(name: str) -> bool:
    """True when the option name (without `--`) is one pgBackRest reads a credential from."""
    return name.endswith(_SECRET_SUFFIXES)


def is_repository_scoped(key: str) -> bool:
    """True when custom option `key` is rendered per repository (`repo-x` → `repo<N>-x`)."""
    return key.startswith(REPO_PREFIX)


def check_option_name(name: str) -> None:
    """Refuse an option name that is not lowercase kebab-case or that names a secret."""
    if not _OPTION_NAME.match(name):
        raise ValueError(f"invalid pgbackrest option name {name!r}")
    if is_secret_option(name):
        raise ValueError(f"pgbackrest option {name!r} carries a secret: use the environment")


def custom_option_problem(key: str, value: str = "") -> str | None:
    """Why `key=value` cannot be a repository's custom option, or None when it may be used.

    The one rule for custom options: spec validation reports it at the option's path (422)
    and the renderer refuses to write anything it rejects.
    """
    if _has_line_break(key):
        return "must not contain a newline or NUL"
    if "=" in key:
        return "option name must not contain '='"
    if key == REPO_PREFIX:
        return "option name is missing after 'repo-'"
    if not _OPTION_NAME.match(key):
        return "option name must be lowercase letters and digits joined by single hyphens"
    reason = _managed_reason(key)
    if reason is not None:
        return f"option {key} is managed by the control plane ({reason})"
    if _has_line_break(value):
        return "must not contain a newline or NUL"
    return None


def check_custom_option(name: str, value: str = "") -> None:
    """Refuse what `custom_option_problem` refuses (the renderer's last-moment check)."""
    reason = custom_option_problem(name, value)
    if reason is not None:
        raise ValueError(f"custom option {name!r} may not be set: {reason}")


def check_option_value(name: str, value: str) -> None:
    """Refuse a value that would break out of its line (an INI value or a single argument)."""
    if _has_line_break(value):
        raise ValueError(f"pgbackrest option {name!r} has a line break or NUL in its value")


def flag(value: bool) -> str:
    """pgBackRest's spelling of a boolean option value."""
    return "y" if value else "n"


def _managed_reason(key: str) -> str | None:
    if _INDEXED_OPTION.match(key):
        return (
            "repositories are numbered by the control plane: write repository options as "
            "repo-<name>"
        )
    name = key.removeprefix(REPO_PREFIX)
    if is_secret_option(name) or is_secret_option(key):
        return "secrets go in the write-only repository fields"
    if name.endswith("path") or name.startswith("host") or name in _MANAGED_REPO_OPTIONS:
        return "set from the repository's fields and the node's layout"
    if is_repository_scoped(key):
        return None
    if key in _MANAGED_GLOBAL_OPTIONS or key.startswith(_MANAGED_GLOBAL_PREFIXES):
        return "the control plane sets it for every command it runs"
    return None


def _has_line_break(text: str) -> bool:
    return any(char in text for char in "\n\r\0")
