"""The backup catalog: `pgbackrest info --output=json` parsed into structs, and what it implies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import msgspec

from controlplane import models
from controlplane.spec.models import BackupType

TASK_ANNOTATION = "controlplane_task_id"

# Status codes (stanza and per repo) that do not stop us reading the catalog: 0 ok and
# 2 "no valid backups" (a freshly created stanza is healthy, just empty).
_HEALTHY = frozenset({0, 2})


class _Info(msgspec.Struct, kw_only=True, rename="kebab"):
    """Base of the info structs: kebab-case keys; unknown keys are ignored, not refused,
    because pgBackRest adds fields across versions."""


class LockStatus(_Info, kw_only=True):
    held: bool
    size: int | None = None
    size_cplt: int | None = None


class StanzaLocks(_Info, kw_only=True):
    backup: LockStatus | None = None
    restore: LockStatus | None = None


class StanzaStatus(_Info, kw_only=True):
    code: int
    message: str
    lock: StanzaLocks | None = None


class RepoStatus(_Info, kw_only=True):
    code: int
    message: str


class RepoInfo(_Info, kw_only=True):
    key: int
    cipher: str
    status: RepoStatus


class DbInfo(_Info, kw_only=True):
    id: int
    repo_key: int
    system_id: int  # exceeds 2^53: msgspec keeps it an exact int
    version: str


class DatabaseRef(_Info, kw_only=True):
    id: int
    repo_key: int


class ArchiveInfo(_Info, kw_only=True):
    id: str
    database: DatabaseRef
    min: str | None = None
    max: str | None = None


class BackupTimestamp(_Info, kw_only=True):
    start: int
    stop: int


class BackupArchive(_Info, kw_only=True):
    start: str | None = None
    stop: str | None = None


class BackupLsn(_Info, kw_only=True):
    start: str
    stop: str


class RepositorySizes(_Info, kw_only=True):
    delta: int
    size: int | None = None  # absent for block-incremental backups
    size_map: int | None = None
    delta_map: int | None = None


class BackupSizes(_Info, kw_only=True):
    size: int
    delta: int
    repository: RepositorySizes


class BackrestVersion(_Info, kw_only=True):
    format: int
    version: str


class BackupInfo(_Info, kw_only=True):
    label: str
    type: BackupType
    prior: str | None = None
    reference: list[str] | None = None
    timestamp: BackupTimestamp
    archive: BackupArchive
    lsn: BackupLsn | None = None
    database: DatabaseRef
    info: BackupSizes
    backrest: BackrestVersion
    error: bool | None = None
    annotation: dict[str, str] | None = None


class StanzaInfo(_Info, kw_only=True):
    name: str
    cipher: str
    status: StanzaStatus
    repo: list[RepoInfo] = msgspec.field(default_factory=list)
    db: list[DbInfo] = msgspec.field(default_factory=list)
    archive: list[ArchiveInfo] = msgspec.field(default_factory=list)
    backup: list[BackupInfo] = msgspec.field(default_factory=list)


# The API's shapes (controlplane.models), under the names this module has always used.
CatalogEntry = models.BackupSet
RecoveryWindow = models.RecoveryWindow


def parse_info(raw: bytes) -> list[StanzaInfo]:
    """Decode `pgbackrest info --output=json` (an array of stanzas)."""
    return msgspec.json.decode(raw, type=list[StanzaInfo])


def catalog(stanza: StanzaInfo, repository_ids: Mapping[int, str]) -> list[CatalogEntry]:
    """Every backup of the stanza, across repositories, oldest first (by stop time, label).

    `repository_ids` maps pgBackRest repo keys to our repository ids; an unknown key is
    reported as `repo<key>` rather than failing the whole listing.
    """
    system_ids = {(db.id, db.repo_key): db.system_id for db in stanza.db}
    entries = [_entry(backup, repository_ids, system_ids) for backup in stanza.backup]
    return sorted(entries, key=lambda entry: (entry.stopped_at, entry.label))


def find_by_task(entries: Iterable[CatalogEntry], task_id: str) -> CatalogEntry | None:
    """The backup annotated with this task id (the newest, should there be several)."""
    found = None
    for entry in entries:
        if entry.task_id == task_id and (found is None or entry.stopped_at >= found.stopped_at):
            found = entry
    return found


def recovery_window(
    entries: Iterable[CatalogEntry], *, last_archived_at: datetime | None
) -> RecoveryWindow | None:
    """From the oldest backup's stop to the newest of (last backup stop, last archived WAL).

    None when there is no backup: without one, nothing can be restored at all.
    """
    stops = [entry.stopped_at for entry in entries]
    if not stops:
        return None
    latest = max(stops)
    if last_archived_at is not None:
        latest = max(latest, _aware(last_archived_at))
    return RecoveryWindow(earliest=min(stops), latest=latest)


def choose_set_for_time(entries: Iterable[CatalogEntry], target: datetime) -> CatalogEntry | None:
    """The newest backup that stopped at or before `target`, or None.

    pgBackRest itself silently restores the latest set, ignoring the target, when no set
    precedes a time target: callers refuse the restore when this returns None.
    """
    target = _aware(target)
    chosen = None
    for entry in entries:
        if entry.stopped_at <= target and (chosen is None or _newer(entry, chosen)):
            chosen = entry
    return chosen


def lsn_value(text: str) -> int:
    """`16/B374D848` as one comparable number."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def choose_set_for_lsn(entries: Iterable[CatalogEntry], target: int) -> CatalogEntry | None:
    """The newest backup whose consistent point (its stop LSN) is at or before `target`, or
    None: recovery to an LSN before the set's stop would fail after the data was replaced."""
    chosen = None
    for entry in entries:
        if entry.lsn_stop is None or lsn_value(entry.lsn_stop) > target:
            continue
        if chosen is None or _newer(entry, chosen):
            chosen = entry
    return chosen


def stanza_problem(
    stanza: StanzaInfo, repository_ids: Mapping[int, str] | None = None
) -> str | None:
    """Words for a stanza status that blocks backups or restores; None when it is usable.

    "No valid backups" is not a problem: the stanza exists and is merely empty.
    """
    repo_problems = [
        f"repository {_repo_name(repo.key, repository_ids or {})}: {_status_words(repo.status)}"
        for repo in stanza.repo
        if repo.status.code not in _HEALTHY
    ]
    code = stanza.status.code
    if code in _HEALTHY or (code == 4 and not repo_problems):
        # 4 "different across repos" with only ok/empty repos: some repos have no backup yet.
        return None
    words = _status_words(stanza.status)
    return f"{words} ({'; '.join(repo_problems)})" if repo_problems else words


class RepositoryHealth(msgspec.Struct, kw_only=True):
    """How one repository answered `info --repo=<key>`.

    `ok`: readable (with or without backups); `missing_stanza`: readable but holding no stanza
    for this node (never created there, or its contents were removed); `degraded`: it could
    not be read (`message` says why).
    """

    status: str
    message: str | None = None


def repository_health(stanza: StanzaInfo, key: int) -> RepositoryHealth:
    """The health of repository `key` in an `info --repo=<key>` answer."""
    repo = next((r for r in stanza.repo if r.key == key), None)
    status: StanzaStatus | RepoStatus = repo.status if repo is not None else stanza.status
    if status.code in _HEALTHY:
        return RepositoryHealth(status="ok")
    if status.code == 1:
        return RepositoryHealth(status="missing_stanza", message=_status_words(status))
    return RepositoryHealth(status="degraded", message=_status_words(status))


def current_system_id(stanza: StanzaInfo) -> int | None:
    """The system id of the stanza's current database (the db history entry with the top id)."""
    if not stanza.db:
        return None
    return max(stanza.db, key=lambda db: (db.id, -db.repo_key)).system_id


def _entry(
    backup: BackupInfo, repository_ids: Mapping[int, str], system_ids: Mapping[tuple[int, int], int]
) -> CatalogEntry:
    annotations = dict(backup.annotation or {})
    return CatalogEntry(
        label=backup.label,
        type=backup.type,
        repository_id=_repo_name(backup.database.repo_key, repository_ids),
        started_at=datetime.fromtimestamp(backup.timestamp.start, UTC),
        stopped_at=datetime.fromtimestamp(backup.timestamp.stop, UTC),
        lsn_start=backup.lsn.start if backup.lsn else None,
        lsn_stop=backup.lsn.stop if backup.lsn else None,
        wal_start=backup.archive.start,
        wal_stop=backup.archive.stop,
        size=backup.info.size,
        repository_size=backup.info.repository.size,
        delta=backup.info.delta,
        repository_delta=backup.info.repository.delta,
        annotations=annotations,
        task_id=annotations.get(TASK_ANNOTATION),
        prior=backup.prior,
        system_id=system_ids.get((backup.database.id, backup.database.repo_key)),
    )


def _repo_name(key: int, repository_ids: Mapping[int, str]) -> str:
    return repository_ids.get(key, f"repo{key}")


def _status_words(status: StanzaStatus | RepoStatus) -> str:
    words = {
        1: "missing stanza path: the stanza was never created in this repository, or the "
        "repository path is wrong",
        3: "missing stanza data: the repository holds only part of the stanza "
        "(archive.info or backup.info is missing)",
        4: "the stanza differs across repositories",
        5: "the repositories hold different database systems (system-id mismatch across repos)",
        6: "the requested backup set was not found",
    }.get(status.code)
    if words is not None:
        return words
    if status.message == "other":
        # Stanza-level 99 carries no detail; the per-repo statuses hold the actual errors.
        return "a repository cannot be read"
    return f"repository error: {status.message}"


def _newer(entry: CatalogEntry, other: CatalogEntry) -> bool:
    return (entry.stopped_at, entry.label) > (other.stopped_at, other.label)


def _aware(moment: datetime) -> datetime:
    # A naive datetime would compare as local time (or raise): refuse rather than guess.
    if moment.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    return moment.astimezone(UTC)
