"""pgBackRest commands: argv lists for each command we run, and exit codes put into words."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

from controlplane.errors import ExternalCommandError
from controlplane.pgbackrest.config import STANZA
from controlplane.pgbackrest.exit_codes import describe_code
from controlplane.pgbackrest.info import TASK_ANNOTATION
from controlplane.pgbackrest.options import (
    backup_option_problem,
    check_option_name,
    check_option_value,
)
from controlplane.spec.models import BackupType

OptionValue = str | int | bool | Sequence[str]
RestoreType = Literal[
    "default", "immediate", "time", "xid", "lsn", "name", "standby", "preserve", "none"
]
TargetAction = Literal["pause", "promote", "shutdown"]

# Restore types that stop at a target; only they accept --target-action, and all but
# `immediate` need a --target.
_TARGET_TYPES = frozenset({"time", "xid", "lsn", "name", "immediate"})
_EXCLUSIVE_TYPES = frozenset({"time", "xid", "lsn"})
_RESTORE_TYPES = _TARGET_TYPES | {"default", "standby", "preserve", "none"}
_COMMAND_NAME = re.compile(r"^[a-z]+(-[a-z]+)*$")
# Options every argv sets itself: a second copy would be an error [031] or a silent override.
_RESERVED = frozenset({"config", "stanza"})

# Retryable: the condition clears by itself while the same command is right.
# 50 another backup/expire holds the stanza lock (it ends); 49 the repository host did not
# answer (network blip, object store restarting); 56 Postgres refused the connection (it is
# starting or restarting). Not 39 (protocol): in practice it wraps TLS/certificate or remote
# configuration failures that fail identically every time, each attempt costing an io-timeout.
_RETRYABLE = frozenset({49, 50, 56})


def pgbackrest_argv(
    command: str, *, config_path: str, options: Mapping[str, OptionValue] | None = None
) -> list[str]:
    """`pgbackrest --config=… --stanza=db --opt=val … <command>`.

    True renders `--opt`, False `--no-opt`, a sequence repeats the option. Options naming a
    secret are refused: secrets only travel in the environment (`secret_env`).
    """
    if not _COMMAND_NAME.match(command):
        raise ValueError(f"invalid pgbackrest command {command!r}")
    check_option_value("config", config_path)
    argv = ["pgbackrest", f"--config={config_path}", f"--stanza={STANZA}"]
    for name, value in (options or {}).items():
        check_option_name(name)
        if name in _RESERVED:
            raise ValueError(f"pgbackrest option {name!r} is set by pgbackrest_argv itself")
        argv.extend(_render_option(name, value))
    argv.append(command)
    return argv


def backup_argv(
    config_path: str,
    *,
    type: BackupType,
    task_id: str,
    annotations: Mapping[str, str] | None = None,
    repo: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> list[str]:
    """`backup --type=…`, annotated with the task id first so a re-run can find its backup;
    `extra` are a request's `backup_options` (allow-listed, `options.backup_option_problem`)."""
    notes = [f"{TASK_ANNOTATION}={task_id}"]
    for key, value in sorted((annotations or {}).items()):
        if not key or "=" in key or key == TASK_ANNOTATION:
            raise ValueError(f"invalid backup annotation key {key!r}")
        notes.append(f"{key}={value}")
    options: dict[str, OptionValue] = {}
    for name, value in sorted((extra or {}).items()):
        reason = backup_option_problem(name, value)
        if reason is not None:
            raise ValueError(f"backup option {name!r} may not be passed: {reason}")
        options[name] = value
    options |= {"type": type, "annotation": notes}
    if repo is not None:
        options["repo"] = repo
    return pgbackrest_argv("backup", config_path=config_path, options=options)


def restore_argv(
    config_path: str,
    *,
    delta: bool = False,
    set_label: str | None = None,
    target_type: RestoreType | None = None,
    target: str | None = None,
    target_exclusive: bool = False,
    target_timeline: str | None = None,
    target_action: TargetAction = "promote",
    archive_mode: Literal["off", "preserve"] | None = None,
    repo: int | None = None,
    pg_path: str | None = None,
    process_max: int | None = None,
    command: str | None = None,
) -> list[str]:
    """`restore` with our choices made explicit (set, target, action, archive mode, repo).

    `command` is the pgbackrest the written restore_command runs (pgBackRest's `cmd`).

    `target_type=None` replays to the end of the archive. `archive_mode="off"` keeps a clone
    from pushing WAL into its source's repository.
    """
    _check_restore_target(target_type, target, target_exclusive)
    # Without an explicit action pgBackRest pauses at a target and the node stays read-only
    # in recovery until someone promotes it; pgBackRest refuses the option for other types.
    action = target_action if target_type in _TARGET_TYPES else None
    candidates: list[tuple[str, OptionValue | None]] = [
        ("delta", True if delta else None),
        ("set", set_label),
        ("type", target_type),
        ("target", target),
        ("target-exclusive", True if target_exclusive else None),
        ("target-action", action),
        ("target-timeline", target_timeline),
        ("archive-mode", archive_mode),
        ("repo", repo),
        ("pg1-path", pg_path),
        ("process-max", process_max),
        ("cmd", command),
    ]
    options = {name: value for name, value in candidates if value is not None}
    return pgbackrest_argv("restore", config_path=config_path, options=options)


def info_argv(
    config_path: str,
    *,
    set_label: str | None = None,
    repo: int | None = None,
    io_timeout: int | None = None,
) -> list[str]:
    """`info --output=json` (optionally for one set, which adds its databases and links).

    `repo` reads one repository only: without it pgBackRest reads every repository in turn,
    and an unreachable object store makes it retry each file until `io-timeout` (60 s) runs
    out, about four minutes in all. `io_timeout` bounds that wait.
    """
    options: dict[str, OptionValue] = {"output": "json"}
    if set_label is not None:
        options["set"] = set_label
    if repo is not None:
        options["repo"] = repo
    if io_timeout is not None:
        options["io-timeout"] = io_timeout
    return pgbackrest_argv("info", config_path=config_path, options=options)


def check_argv(config_path: str) -> list[str]:
    """`check`: the stanza is valid and WAL archiving reaches every repository.

    pgBackRest 2.45 takes no `--repo` here: it checks every repository the config names, so
    one repository is checked alone through a config file that names only it.
    """
    return pgbackrest_argv("check", config_path=config_path)


def stanza_create_argv(config_path: str) -> list[str]:
    """`stanza-create`: a no-op when the repository already matches this database.

    Like `check`, it acts on every repository the config names (no `--repo` in 2.45).
    """
    return pgbackrest_argv("stanza-create", config_path=config_path)


def expire_argv(
    config_path: str, *, set_label: str | None = None, repo: int | None = None
) -> list[str]:
    """`expire` per retention, or of one set (with `set_label`)."""
    options: dict[str, OptionValue] = {}
    if set_label is not None:
        options["set"] = set_label
    if repo is not None:
        options["repo"] = repo
    return pgbackrest_argv("expire", config_path=config_path, options=options)


def verify_argv(config_path: str, *, repo: int | None = None) -> list[str]:
    """`verify`: checksums of the backups and WAL in the repository (text output only)."""
    options: dict[str, OptionValue] = {}
    if repo is not None:
        options["repo"] = repo
    return pgbackrest_argv("verify", config_path=config_path, options=options)


def describe_exit(code: int, output_tail: str, *, command: str) -> str:
    """`pgbackrest exited <code> (<words>)`, plus the last ERROR line of the (redacted) output."""
    if code < 0:
        text = f"pgbackrest was killed by signal {-code}"
    else:
        text = f"pgbackrest exited {code} ({describe_code(code, command=command)})"
    last_error = last_error_line(output_tail)
    return f"{text}: {last_error}" if last_error else text


# A file a restore could not write intact: `error restoring '<path>': actual checksum '…' does
# not match expected checksum '…'` (or a size or decompression failure in its place).
_RESTORING = re.compile(r"error restoring '(?P<path>[^']+)': (?P<why>[^\[]+?)\s*(?:\[|$)")
_CHECKSUM = re.compile(r"actual checksum '[0-9a-f]+' does not match expected checksum '[0-9a-f]+'")


def damaged_file(message: str, *, pg_data: str) -> tuple[str, str] | None:
    """The file of a backup set that a failed restore into `pg_data` names, as the set's
    manifest names it (`pg_data/base/5/1259`), and why, in words; None when it names none."""
    match = _RESTORING.search(message)
    if match is None:
        return None
    path = match["path"]
    prefix = pg_data.rstrip("/") + "/"
    name = "pg_data/" + path.removeprefix(prefix) if path.startswith(prefix) else path
    why = match["why"].strip()
    if _CHECKSUM.search(why):
        why = "its content does not match the checksum the backup recorded"
    return name, why


def is_retryable(code: int) -> bool:
    """True for failures that clear by themselves: lock held, host or Postgres unreachable."""
    return code in _RETRYABLE


def error_for(code: int, output_tail: str, *, command: str, subject: str) -> ExternalCommandError:
    """The domain error for a failed command, e.g. `backup of node n1 of storefront failed: …`."""
    return ExternalCommandError(
        f"{subject} failed: {describe_exit(code, output_tail, command=command)}",
        exit_code=code,
        retryable=is_retryable(code),
    )


def last_error_line(output: str, *, limit: int = 600) -> str | None:
    """The last `ERROR: [NNN]: …` message in pgBackRest output, with its indented
    continuation and HINT lines joined onto one line (at most `limit` characters)."""
    message: list[str] = []
    collecting = False
    for line in output.splitlines():
        start = line.find("ERROR: [")
        if start >= 0:
            message, collecting = [line[start:].strip()], True
        elif collecting and line[:1].isspace() and line.strip():
            # pgBackRest indents the rest of a multi-line error (causes, HINT: lines).
            message.append(line.strip())
        else:
            collecting = False
    if not message:
        return None
    text = " ".join(message)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# A console or stderr line: `[timestamp ]P00   WARN: …` on stdout, `WARN: …` on stderr.
_CONSOLE_LEVEL = re.compile(
    r"^(?:[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:.]+ )?(?:P[0-9]+ +)?"
    r"(?P<level>ERROR|WARN|INFO|DETAIL|DEBUG|TRACE):"
)
_LEVELS = {"ERROR": "error", "WARN": "warning"}


def console_level(line: str) -> str | None:
    """The task log level of one line of pgBackRest output: `error` for `ERROR:`, `warning`
    for `WARN:`, `info` for the other levels it prints; None for a line that names none (an
    indented continuation of the line before, or another program's text)."""
    match = _CONSOLE_LEVEL.match(line)
    if match is None:
        return None
    return _LEVELS.get(match["level"], "info")


def _render_option(name: str, value: OptionValue) -> list[str]:
    if isinstance(value, bool):
        return [f"--{name}" if value else f"--no-{name}"]
    if isinstance(value, int):
        return [f"--{name}={value}"]
    if isinstance(value, str):
        check_option_value(name, value)
        return [f"--{name}={value}"]
    rendered = []
    for item in value:
        check_option_value(name, item)
        rendered.append(f"--{name}={item}")
    return rendered


def _check_restore_target(target_type: str | None, target: str | None, exclusive: bool) -> None:
    if target_type is not None and target_type not in _RESTORE_TYPES:
        raise ValueError(f"unknown restore type {target_type!r}")
    needs_target = target_type in _TARGET_TYPES and target_type != "immediate"
    if needs_target and target is None:
        raise ValueError(f"restore type {target_type!r} needs a target")
    if not needs_target and target is not None:
        raise ValueError(f"restore type {target_type!r} takes no target")
    if exclusive and target_type not in _EXCLUSIVE_TYPES:
        raise ValueError("target_exclusive applies to time, xid and lsn targets only")
