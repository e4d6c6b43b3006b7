"""Restore options: the few pgBackRest restore options a user may choose, and their values.

Everything else about a restore (paths, stanza, repository, `--delta`, `--target-action`,
`--archive-mode`) is decided by the restore workflow, so it is refused here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from controlplane.spec.models import RestoreConfig
from controlplane.spec.paths import (
    UNSAFE_TEXT,
    Problem,
    field_path,
    has_control_chars,
    problem,
)
from controlplane.spec.repositories import check_repository

ALLOWED_RESTORE_OPTIONS = frozenset(
    {"set", "type", "target", "target-exclusive", "target-timeline", "process-max"}
)
RESTORE_TYPES = frozenset({"default", "immediate", "time", "xid", "lsn", "name"})
TARGET_TYPES = frozenset({"time", "xid", "lsn", "name"})
# pgBackRest accepts --target-exclusive only with these types.
_EXCLUSIVE_TYPES = frozenset({"time", "xid", "lsn"})
_MANAGED_RESTORE_OPTIONS = frozenset(
    {"path", "stanza", "target-action", "archive-mode", "delta", "force"}
)
_MANAGED_RESTORE_PREFIXES = ("repo", "pg")

_LABEL = re.compile(r"^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$")
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
_DIGITS = re.compile(r"^[0-9]{1,20}$")
_TIMESTAMP = re.compile(
    r"^(?P<stamp>[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)"
    r"(?P<zone> ?(?:Z|z|UTC|[+-][0-9]{2}(?::?[0-9]{2})?))?$"
)
_TIME_EXAMPLE = "2025-05-05 09:38:52-04"
# Transaction ids as PostgreSQL's recovery_target_xid and pgBackRest take them: 32 bits, and a
# normal id (0, 1 and 2 are reserved). The epoch is found on the source when the target is checked.
MIN_XID = 3
MAX_XID = 2**32 - 1
# Names of restore points: what pg_create_restore_point accepts (63 bytes), limited to characters
# that are safe in postgresql.auto.conf and in logs.
_RESTORE_POINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
RestorePointName = Annotated[
    str,
    Meta(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$(?!\n)"),
]
RESTORE_POINT_NAME_RULE = (
    "1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit"
)


class RestorePointRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of a named restore point: `POST …/nodes/{node}/restore-points`."""

    name: RestorePointName


def normalise_restore_options(options: Mapping[str, str]) -> dict[str, str]:
    """The options with pgBackRest's spelling of keys (`target_exclusive` → `target-exclusive`)."""
    return {key.replace("_", "-"): value for key, value in options.items()}


def parse_time_target(text: str) -> datetime:
    """Parse a time restore target into an aware UTC datetime.

    The timestamp must carry an explicit zone (`Z`, `UTC`, `+00`, `-04:00`, `+0000`): a naive
    time would be read in the server's zone by PostgreSQL and in ours when picking the set.
    Raises ValueError with a message fit for the user.
    """
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"time target must be a timestamp like {_TIME_EXAMPLE}")
    zone = match["zone"]
    if zone is None:
        raise ValueError("time target needs a timezone")
    zone = zone.strip()
    if zone in ("Z", "z", "UTC"):
        zone = "+00:00"
    elif len(zone) == 3:
        zone = f"{zone}:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        parsed = datetime.fromisoformat(match["stamp"].replace(" ", "T") + zone)
    except ValueError:
        raise ValueError(f"time target {text!r} is not a valid timestamp") from None
    return parsed.astimezone(UTC)


def check_restore_config(config: RestoreConfig, path: str) -> list[Problem]:
    """Problems with a `restore_config` (its repository and its options) at `path`."""
    errors = check_repository(config.repository, field_path(path, "repository"))
    errors += check_restore_options(config.restore_options, field_path(path, "restore_options"))
    return errors


def check_restore_options(options: Mapping[str, str], path: str) -> list[Problem]:
    """Problems with `restore_options` at `path`: unknown or managed keys, bad values."""
    errors: list[Problem] = []
    accepted: dict[str, tuple[str, str]] = {}  # normalised key -> (key as given, value)
    for key, value in options.items():
        option_path = field_path(path, key)
        name = key.replace("_", "-")
        reason = _key_problem(key, name, accepted) or _value_problem(name, value)
        if reason is not None:
            errors.append(problem(option_path, reason))
        else:
            accepted[name] = (key, value)
    type_rejected = "type" not in accepted and any(
        key.replace("_", "-") == "type" for key in options
    )
    if not type_rejected:  # a bad type is reported once, not again through its target
        errors += _check_target(accepted, path)
    return errors


def _key_problem(key: str, name: str, accepted: Mapping[str, tuple[str, str]]) -> str | None:
    if has_control_chars(key):
        return UNSAFE_TEXT
    if name in accepted:
        return f"option {name} is given twice (also as {accepted[name][0]})"
    if name in ALLOWED_RESTORE_OPTIONS:
        return None
    if name in _MANAGED_RESTORE_OPTIONS or name.startswith(_MANAGED_RESTORE_PREFIXES):
        return f"option {name} is managed by the control plane"
    allowed = ", ".join(sorted(ALLOWED_RESTORE_OPTIONS))
    return f"unknown restore option {name} (allowed: {allowed})"


def _value_problem(name: str, value: str) -> str | None:
    if has_control_chars(value):
        return UNSAFE_TEXT
    if name == "type" and value not in RESTORE_TYPES:
        return f"type must be one of {', '.join(sorted(RESTORE_TYPES))}"
    if name == "set" and value != "latest" and not _LABEL.fullmatch(value):
        return "set must be latest or a backup label like 20250505-093852F"
    if name == "target-exclusive" and value not in ("y", "n", "true", "false"):
        return "target-exclusive must be y, n, true or false"
    timeline_ok = value in ("current", "latest") or _DIGITS.fullmatch(value)
    if name == "target-timeline" and not timeline_ok:
        return "target-timeline must be current, latest or a timeline number"
    if name == "process-max" and not (_DIGITS.fullmatch(value) and 1 <= int(value) <= 64):
        return "process-max must be a whole number from 1 to 64"
    return None


def _check_target(accepted: Mapping[str, tuple[str, str]], path: str) -> list[Problem]:
    restore_type = accepted.get("type", ("type", "default"))[1]
    target = accepted.get("target")
    errors: list[Problem] = []
    if restore_type in TARGET_TYPES and target is None:
        errors.append(problem(field_path(path, "target"), f"required for type {restore_type}"))
    if target is not None:
        key, value = target
        if restore_type not in TARGET_TYPES:
            reason: str | None = "target is only allowed with type time, xid, lsn or name"
        else:
            reason = target_problem(restore_type, value)
        if reason is not None:
            errors.append(problem(field_path(path, key), reason))
    exclusive = accepted.get("target-exclusive")
    if exclusive is not None and restore_type not in _EXCLUSIVE_TYPES:
        errors.append(
            problem(
                field_path(path, exclusive[0]),
                "target-exclusive is only allowed with type time, xid or lsn",
            )
        )
    return errors


def target_problem(restore_type: str, target: str) -> str | None:
    """Why `target` is not a valid target for `restore_type`, or None when it is."""
    if restore_type == "time":
        try:
            parse_time_target(target)
        except ValueError as exc:
            return str(exc)
    elif restore_type == "xid" and not (
        _DIGITS.fullmatch(target) and MIN_XID <= int(target) <= MAX_XID
    ):
        return f"xid target must be a 32-bit transaction id from {MIN_XID} to {MAX_XID}"
    elif restore_type == "lsn" and not _LSN.fullmatch(target):
        return "lsn target must look like 0/3000060"
    elif restore_type == "name" and not _RESTORE_POINT_NAME.fullmatch(target):
        return f"name target must be a restore point name: {RESTORE_POINT_NAME_RULE}"
    return None
