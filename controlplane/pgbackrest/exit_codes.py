"""pgBackRest exit codes (its `error.yaml` codes) in words an operator can act on."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

_SYSTEM_ID_MISMATCH = (
    "the repository belongs to a different database system (system-id mismatch): use a new "
    "repository path or id, or move the node to a new repository generation"
)

# Code -> words; the same words whatever the command, unless _BY_COMMAND says otherwise.
_WORDS: Mapping[int, str] = MappingProxyType(
    {
        25: "internal pgbackrest assertion failed: a pgbackrest bug",
        28: _SYSTEM_ID_MISMATCH,
        29: "a repository info or manifest file is corrupt",
        31: "invalid pgbackrest option",
        32: "invalid pgbackrest option value",
        37: "a required pgbackrest option is missing",
        38: "postgres is still running",
        39: "protocol error talking to a remote host or storage, often TLS or a remote error",
        40: "the target path is not empty",
        41: "cannot open a file: permissions or storage error",
        42: "cannot read a file: permissions or storage error",
        44: _SYSTEM_ID_MISMATCH,
        45: "the WAL segment is already archived with different contents",
        46: "this postgres version is not supported by pgbackrest",
        49: "cannot reach the repository host",
        50: "lock held by another backup or expire on this stanza",
        51: _SYSTEM_ID_MISMATCH,
        55: "a required file is missing: wrong repository path or stanza, or files deleted",
        56: "cannot connect to postgres",
        57: "a query to postgres failed",
        58: "postgres does not match the stanza or restore target: timeline, version or path",
        68: "archive_command does not run pgbackrest: archiving to this stanza is off",
        62: "the stanza is stopped by pgbackrest stop",
        63: "terminated by signal",
        72: "run on a host that is not the postgres host",
        73: "a configured path does not exist",
        75: "backup set not found",
        82: "WAL was not archived before the archive timeout: check archive_command",
        87: "archive_mode is off in postgres",
        94: "out of memory",
        95: "crypto error: wrong cipher passphrase or TLS certificate problem",
        99: "a repository JSON file is corrupt",
        101: "the storage service returned an error",
        103: "the repository is invalid or unusable",
    }
)

# Where a code means something more precise for one command.
_BY_COMMAND: Mapping[tuple[int, str], str] = MappingProxyType(
    {
        (
            38,
            "restore",
        ): "postgres is still running: stop it before a restore",
        (40, "restore"): "the data directory is not empty: restore with delta or into an empty dir",
        (40, "stanza-create"): "the repository path is not empty but holds no valid stanza",
        (55, "backup"): "a required file is missing: archive.info, backup.info or WAL; wrong "
        "repository path or stanza, or files deleted by a bucket lifecycle rule",
        (75, "restore"): "backup set not found: no backup matches the requested set or target",
    }
)


def describe_code(code: int, *, command: str) -> str:
    """Words for a pgBackRest exit code, specialised for the command that returned it."""
    return _BY_COMMAND.get((code, command)) or _WORDS.get(code) or "unexpected pgbackrest error"
