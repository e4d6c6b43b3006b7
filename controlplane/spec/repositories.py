"""Semantic checks of backup repositories and `backup_config` (ids, paths, schedules, INI)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from croniter import CroniterError, croniter

from controlplane.pgbackrest.options import backup_option_problem
from controlplane.spec.custom_options import check_custom_options, check_global_option_conflicts
from controlplane.spec.models import (
    BackupConfig,
    BackupSchedule,
    Repository,
    is_filesystem,
    repository_id,
)
from controlplane.spec.paths import (
    UNSAFE_TEXT,
    Problem,
    field_path,
    has_control_chars,
    item_path,
    problem,
)

# A fixed start keeps "does this schedule ever fire" independent of the wall clock.
_CRON_PROBE_START = datetime(2000, 1, 1, tzinfo=UTC)


def check_backup_config(config: BackupConfig, path: str) -> list[Problem]:
    """Problems with one `backup_config` (database level or a node's) at `path`."""
    repositories_path = field_path(path, "repositories")
    errors: list[Problem] = []
    seen_ids: dict[str, int] = {}
    for index, repository in enumerate(config.repositories):
        repo_path = item_path(repositories_path, index)
        errors += check_repository(repository, repo_path)
        effective_id = repository_id(repository)
        if effective_id in seen_ids:
            errors.append(
                problem(
                    field_path(repo_path, "id"),
                    f"duplicate repository id {effective_id} (also repositories"
                    f"[{seen_ids[effective_id]}]): set `id` to tell the repositories apart",
                )
            )
        else:
            seen_ids[effective_id] = index
    errors += check_global_option_conflicts(config.repositories, repositories_path)
    errors += _check_schedules(config.schedules, field_path(path, "schedules"))
    return errors


def check_repository(repository: Repository, path: str) -> list[Problem]:
    """Problems with one repository at `path`: INI-unsafe text, paths, custom options."""
    errors = _check_text_fields(repository, path)
    errors += _check_base_path(repository, field_path(path, "base_path"))
    if repository.storage_ca_file is not None and not repository.storage_ca_file.startswith("/"):
        errors.append(problem(field_path(path, "storage_ca_file"), "must be an absolute path"))
    errors += check_custom_options(repository.custom_options, field_path(path, "custom_options"))
    return errors


def _check_text_fields(repository: Repository, path: str) -> list[Problem]:
    # Every string ends up as an INI value (or an environment variable); a newline would let it
    # add options of its own.
    errors: list[Problem] = []
    names = zip(repository.__struct_fields__, repository.__struct_encode_fields__, strict=True)
    for name, encode_name in names:
        value = getattr(repository, name)
        if isinstance(value, str) and has_control_chars(value):
            errors.append(problem(field_path(path, encode_name), UNSAFE_TEXT))
    return errors


def _check_base_path(repository: Repository, path: str) -> list[Problem]:
    base_path = repository.base_path
    is_posix = is_filesystem(repository)
    if base_path is None:
        return [problem(path, "required field for posix and cifs repositories")] if is_posix else []
    if has_control_chars(base_path):
        return []  # already reported as unsafe text
    if not base_path.startswith("/"):
        return [problem(path, "must be an absolute path")]
    # normpath keeps a leading "//", so look for it explicitly.
    if os.path.normpath(base_path) != base_path or "//" in base_path:
        return [problem(path, "must be normalised (no '.', '..', '//' or trailing '/')")]
    if is_posix and base_path == "/":
        return [problem(path, "must not be the root directory")]
    return []


def _check_schedules(schedules: list[BackupSchedule], path: str) -> list[Problem]:
    errors: list[Problem] = []
    seen: dict[str, int] = {}
    for index, schedule in enumerate(schedules):
        schedule_path = item_path(path, index)
        if schedule.id in seen:
            errors.append(
                problem(
                    field_path(schedule_path, "id"),
                    f"duplicate schedule id {schedule.id} (also schedules[{seen[schedule.id]}])",
                )
            )
        else:
            seen[schedule.id] = index
        if has_control_chars(schedule.id):
            errors.append(problem(field_path(schedule_path, "id"), UNSAFE_TEXT))
        reason = cron_problem(schedule.cron_expression)
        if reason is not None:
            errors.append(problem(field_path(schedule_path, "cron_expression"), reason))
    return errors


# The descriptors pgEdge's scheduler (robfig/cron) accepts, as croniter reads them.
CRON_DESCRIPTORS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)


def cron_problem(expression: str) -> str | None:
    """Why `expression` is not a usable cron expression, or None when it is.

    As in pgEdge: 5 fields (minute hour day month weekday; `?` means `*` in the day fields) or
    a descriptor such as `@daily`; evaluated in UTC.
    """
    fields = expression.split()
    if expression.startswith("@"):
        if expression.strip() in CRON_DESCRIPTORS:
            return None
        if fields and fields[0] == "@every":
            return (
                "@every intervals are not supported: write the schedule as 5 cron fields "
                "(e.g. '*/30 * * * *' for every 30 minutes)"
            )
        return (
            f"unknown cron descriptor {expression!r} (one of {', '.join(sorted(CRON_DESCRIPTORS))})"
        )
    if len(fields) != 5:
        return (
            f"cron expression must have 5 fields (minute hour day month weekday), got {len(fields)}"
        )
    try:
        valid = croniter.is_valid(expression)
    except (CroniterError, ValueError, TypeError):
        valid = False
    if not valid:
        return f"invalid cron expression {expression!r}"
    try:
        croniter(expression, _CRON_PROBE_START).get_next(datetime)
    except (CroniterError, ValueError):
        return f"cron expression {expression!r} never fires"
    return None


def check_backup_options(options: dict[str, str], path: str) -> list[Problem]:
    """Problems with a backup request's `backup_options` (pgBackRest options, allow-listed)."""
    errors: list[Problem] = []
    for key, value in options.items():
        reason = backup_option_problem(key, value)
        if reason is not None:
            errors.append(problem(field_path(path, key), reason))
    return errors
