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

# A custom option may name a repository option with this prefix (`repo-storage-port`) or without
# it, as pgEdge does (`storage-port`); either way it is rendered `repo<N>-<name>`.
REPO_PREFIX = "repo-"

# Indexed options (`repo2-…`, `pg1-…`) would reach past the repository that sets them.
_INDEXED_OPTION = re.compile(r"^(repo|pg)[0-9]+-")

# pgBackRest 2.45's repository options (`pgbackrest help <command>`), without `repo-`.
REPOSITORY_OPTIONS = frozenset(
    {
        *("azure-account", "azure-container", "azure-endpoint", "azure-key", "azure-key-type"),
        *("azure-uri-style", "block", "block-age-map", "block-checksum-size-map"),
        *("block-size-map", "block-size-super", "block-size-super-full", "bundle"),
        *("bundle-limit", "bundle-size", "cipher-pass", "cipher-type", "gcs-bucket"),
        *("gcs-endpoint", "gcs-key", "gcs-key-type", "hardlink", "host", "host-ca-file"),
        *("host-ca-path", "host-cert-file", "host-cmd", "host-config", "host-config-include-path"),
        *("host-config-path", "host-key-file", "host-port", "host-type", "host-user", "path"),
        *("retention-archive", "retention-archive-type", "retention-diff", "retention-full"),
        *("retention-full-type", "retention-history", "s3-bucket", "s3-endpoint", "s3-key"),
        *("s3-key-secret", "s3-key-type", "s3-kms-key-id", "s3-region", "s3-role", "s3-token"),
        *("s3-uri-style", "storage-ca-file", "storage-ca-path", "storage-host", "storage-port"),
        *("storage-upload-chunk-size", "storage-verify-tls", "type"),
    }
)

# pgBackRest 2.45's options a config file's `[global]` section may set (each applies to the
# commands that know it).
GLOBAL_OPTIONS = frozenset(
    {
        *("archive-async", "archive-check", "archive-copy", "archive-get-queue-max"),
        *("archive-header-check", "archive-missing-retry", "archive-mode-check"),
        *("archive-push-queue-max", "archive-timeout", "backup-standby", "buffer-size"),
        *("checksum-page", "cmd", "cmd-ssh", "compress", "compress-level"),
        *("compress-level-network", "compress-type", "db-timeout", "delta", "exclude"),
        *("expire-auto", "io-timeout", "lock-path", "log-level-console", "log-level-file"),
        *("log-level-stderr", "log-path", "log-subprocess", "log-timestamp"),
        *("manifest-save-threshold", "neutral-umask", "process-max", "protocol-timeout"),
        *("recovery-option", "resume", "sck-keep-alive", "spool-path", "start-fast"),
        *("stop-auto", "tcp-keep-alive-count", "tcp-keep-alive-idle", "tcp-keep-alive-interval"),
        *("link-all", "link-map", "tablespace-map", "tablespace-map-all", "archive-mode"),
        *("db-include", "db-exclude"),
    }
)

# Options pgBackRest reads from the command line only: in a config file it ignores them.
COMMAND_LINE_ONLY_OPTIONS = frozenset(
    {
        *("annotation", "config", "config-include-path", "config-path", "dry-run", "force"),
        *("online", "output", "repo", "set", "stanza", "target", "target-action"),
        *("target-exclusive", "target-timeline", "type", "verbose", "version", "help"),
    }
)

# Checked after resolving a repository option's name: these come from the repository's own
# fields.
_MANAGED_REPO_OPTIONS = frozenset(
    {
        *("path", "type", "cipher-pass", "cipher-type"),
        *("s3-bucket", "s3-endpoint", "s3-region", "s3-uri-style", "s3-key-type"),
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


def repository_option(key: str) -> str | None:
    """The repository option custom option `key` names (without `repo-`), or None when it is
    not one: `storage-port` and `repo-storage-port` both name `storage-port`."""
    if key in REPOSITORY_OPTIONS:
        return key
    name = key.removeprefix(REPO_PREFIX)
    if key.startswith(REPO_PREFIX) and name in REPOSITORY_OPTIONS:
        return name
    return None


def is_repository_scoped(key: str) -> bool:
    """True when custom option `key` is rendered per repository (as `repo<N>-<name>`)."""
    return repository_option(key) is not None


def check_option_name(name: str) -> None:
    """Refuse an option name that is not lowercase kebab-case or that names a secret."""
    if not _OPTION_NAME.match(name):
        raise ValueError(f"invalid pgbackrest option name {name!r}")
    if is_secret_option(name):
        raise ValueError(f"pgbackrest option {name!r} carries a secret: use the environment")


def custom_option_problem(key: str, value: str = "") -> str | None:
    """Why `key=value` cannot be a repository's custom option, or None when it may be used.

    Each key is looked up in pgBackRest's own option list: a repository option is rendered
    `repo<N>-<name>` in the repository that sets it (as pgEdge does), a global option in
    `[global]`. The one rule for custom options: spec validation reports it at the option's
    path (422) and the renderer refuses to write anything it rejects.
    """
    if _has_line_break(key):
        return "must not contain a newline or NUL"
    if "=" in key:
        return "option name must not contain '='"
    if key == REPO_PREFIX:
        return "option name is missing after 'repo-'"
    if not _OPTION_NAME.match(key):
        return "option name must be lowercase letters and digits joined by single hyphens"
    reason = _placement_reason(key) or _managed_reason(key)
    if reason is not None:
        return reason
    if _has_line_break(value):
        return "must not contain a newline or NUL"
    return None


def _placement_reason(key: str) -> str | None:
    """Why pgBackRest would not read `key` where a custom option puts it, or None."""
    indexed = _INDEXED_OPTION.match(key)
    if indexed is not None:
        if indexed.group(1) == "pg":
            return f"option {key} is managed by the control plane (it sets the pg options)"
        bare = key[indexed.end() :]
        return (
            f"option {key} names a repository by number; the control plane numbers the "
            f"repositories: write {bare} and it applies to this repository"
        )
    if is_repository_scoped(key) or key in GLOBAL_OPTIONS:
        return None
    if key in COMMAND_LINE_ONLY_OPTIONS:
        return (
            f"option {key} is read from the command line only: pgbackrest ignores it in a "
            "configuration file"
        )
    if key.startswith(REPO_PREFIX):
        return f"pgbackrest 2.45 has no repository option {key}"
    return f"pgbackrest 2.45 has no option {key} (it would be ignored)"


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
    name = repository_option(key)
    if is_secret_option(key) or (name is not None and is_secret_option(name)):
        return f"option {key} carries a secret: secrets go in the write-only repository fields"
    if name is not None:
        if name in _MANAGED_REPO_OPTIONS or name.startswith("host") or name.endswith("path"):
            return (
                f"option {key} is managed by the control plane (set from the repository's "
                "fields and the node's layout)"
            )
        return None
    if key in _MANAGED_GLOBAL_OPTIONS or key.startswith(_MANAGED_GLOBAL_PREFIXES):
        return (
            f"option {key} is managed by the control plane (it sets it for every command it runs)"
        )
    return None


def _has_line_break(text: str) -> bool:
    return any(char in text for char in "\n\r\0")


# pgBackRest options a manual backup request may pass (`backup_options`, as in pgEdge): what
# changes how this one backup is taken. Nothing that moves files, names a repository, reads a
# secret, or changes what the control plane reads back (label, expiry, annotations).
BACKUP_REQUEST_OPTIONS = frozenset(
    {
        *("archive-check", "archive-copy", "archive-timeout", "backup-standby", "buffer-size"),
        *("checksum-page", "compress-level", "compress-level-network", "compress-type"),
        *("db-timeout", "io-timeout", "manifest-save-threshold", "process-max"),
        *("protocol-timeout", "resume", "start-fast", "stop-auto"),
    }
)


_BOOLEAN_BACKUP_OPTIONS = frozenset(
    {"archive-check", "archive-copy", "backup-standby", "checksum-page", "resume", "start-fast"}
    | {"stop-auto"}
)


def backup_option_problem(key: str, value: str) -> str | None:
    """Why `key=value` cannot be passed to one `pgbackrest backup`, or None when it may."""
    if key not in BACKUP_REQUEST_OPTIONS:
        if key.startswith("--"):
            return f"write the option without '--' ({key[2:]})"
        return (
            f"option {key} is not one a backup request may set (allowed: "
            f"{', '.join(sorted(BACKUP_REQUEST_OPTIONS))})"
        )
    if not value or _has_line_break(value) or value.startswith("-"):
        return "must be a non-empty value without a newline or NUL, not starting with '-'"
    if key in _BOOLEAN_BACKUP_OPTIONS and value not in ("y", "n"):
        return f"{key} is y or n"
    return None
