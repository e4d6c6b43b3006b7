"""Name and xid restore targets: restore points written so that they are restorable, transactions
looked up on the live source, and the checks that a target is reachable from a backup set.

PostgreSQL only learns that a name or xid target is unreachable at the end of recovery, after
pgBackRest replaced the data: every check here runs before anything is touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from controlplane.errors import InvalidInputError
from controlplane.pgbackrest import info as pgb_info
from controlplane.store.restore_points import RestorePointRow

if TYPE_CHECKING:
    from controlplane.nodes.restore_source import ArchiveEnd

# How long creating a restore point waits for its WAL segment to reach the repository (the
# request is synchronous; pgBackRest's own archive-timeout is as long).
RESTORE_POINT_ARCHIVE_SECONDS = 60.0
# pgBackRest reports a set's stop time truncated to the second, and the set is consistent a
# little before it finished: a commit at least this long after the reported stop lies after the
# set's consistent point.
STOP_SLACK = timedelta(seconds=1)
_INSTEAD = "use a time or lsn target instead"

XidStatus = Literal["committed", "aborted", "in progress", "too old", "not assigned"]


async def wait_archived(conn: Any, segment: str, *, seconds: float) -> bool:
    """Wait until the instance reports `segment` (or a later one) archived; False when it has
    not after `seconds`.

    The archiver works through segments in order, so passing `segment` means it is archived.
    """
    deadline = time.monotonic() + seconds
    while True:
        archived = await conn.fetchval("SELECT last_archived_wal FROM pg_stat_archiver")
        # Names sort by position (a `.backup` file right after its segment; a `.history`
        # file, shorter, never passes a segment of its timeline).
        if archived is not None and archived >= segment:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.2)


@dataclass(frozen=True)
class WrittenRestorePoint:
    """A restore point as the instance wrote it, and whether its WAL reached the archive."""

    lsn: str
    time: datetime
    segment: str
    timeline: int
    timeline_history: list[tuple[int, str]]
    system_identifier: int
    archived: bool


async def write_restore_point(conn: Any, name: str, *, seconds: float) -> WrittenRestorePoint:
    """`pg_create_restore_point(name)`, then switch WAL and wait (at most `seconds`)
    until the segment holding it is archived."""
    system_id = int(await conn.fetchval("SELECT system_identifier FROM pg_control_system()"))
    row = await conn.fetchrow(
        "SELECT pg_create_restore_point($1)::text AS lsn, clock_timestamp() AS time", name
    )
    lsn, moment = str(row["lsn"]), row["time"]
    # The segment holding the record's last byte, named on the current timeline.
    segment = str(await conn.fetchval("SELECT pg_walfile_name($1::text::pg_lsn)", lsn))
    timeline = int(segment[:8], 16)
    history = await timeline_history(conn, timeline)
    await conn.execute("SELECT pg_switch_wal()")
    return WrittenRestorePoint(
        lsn=lsn,
        time=moment,
        segment=segment,
        timeline=timeline,
        timeline_history=history,
        system_identifier=system_id,
        archived=await wait_archived(conn, segment, seconds=seconds),
    )


async def timeline_history(conn: Any, timeline: int) -> list[tuple[int, str]]:
    """The timelines `timeline` descends from and where each was left (its history file);
    empty for timeline 1, or when the file cannot be read (then only sets of the same timeline
    count as leading to the restore point)."""
    if timeline <= 1:
        return []
    try:
        text = await conn.fetchval("SELECT pg_read_file($1)", f"pg_wal/{timeline:08X}.history")
    except asyncpg.PostgresError:
        return []
    return parse_timeline_history(str(text or ""))


def parse_timeline_history(text: str) -> list[tuple[int, str]]:
    """`[(parent timeline, switch LSN), …]` from a timeline history file, oldest first."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit() and "/" in fields[1]:
            found.append((int(fields[0]), fields[1].upper()))
    return found


def full_xid(xid: int, next_full_xid: int) -> int | None:
    """The 64-bit (epoch-qualified) id of the 32-bit `xid`, given the next id the source will
    assign; None when `xid` has not been assigned yet.

    A 32-bit id below the next one's low half is of the current epoch; one at or above it can
    only be of the previous epoch (PostgreSQL keeps fewer than 2^31 ids in use).
    """
    epoch, low = next_full_xid >> 32, next_full_xid & 0xFFFFFFFF
    if xid < low:
        return (epoch << 32) | xid
    if epoch == 0:
        return None
    return ((epoch - 1) << 32) | xid


@dataclass(frozen=True)
class XidFacts:
    """What the live source says about an xid target, and how far its archive reaches now."""

    status: XidStatus
    next_xid: int  # the next 32-bit id the source will assign
    committed_at: datetime | None = None
    archive_end: ArchiveEnd | None = None


async def probe_xid(conn: Any, xid: int) -> XidFacts:
    """Whether and when the 32-bit `xid` committed, as the instance behind `conn` says."""
    # The snapshot's xmax is the next id to be assigned: reading it assigns none.
    next_full = int(await conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))
    full = full_xid(xid, next_full)
    next_xid = next_full & 0xFFFFFFFF
    if full is None:
        return XidFacts(status="not assigned", next_xid=next_xid)
    # NULL: older than the oldest status the instance keeps.
    status = await conn.fetchval("SELECT pg_xact_status($1::text::xid8)", str(full))
    if status != "committed":
        return XidFacts(status=status or "too old", next_xid=next_xid)
    try:
        committed_at = await conn.fetchval(
            "SELECT pg_xact_commit_timestamp($1::text::xid)", str(xid)
        )
    except asyncpg.PostgresError:  # track_commit_timestamp is off
        committed_at = None
    return XidFacts(status="committed", next_xid=next_xid, committed_at=committed_at)


@dataclass(frozen=True)
class TargetFacts:
    """What a name or xid target is checked against: the restore points recorded for the
    source node, or what the live source says about the transaction (None: not reachable)."""

    source: str  # "node n1 of storefront", for messages
    restore_points_path: str  # where restore points of the source node are created
    restore_points: Sequence[RestorePointRow] = ()
    xid: XidFacts | None = None


def _refuse(path: str, message: str) -> InvalidInputError:
    return InvalidInputError([{"path": path, "message": message}])


def recorded_point(facts: TargetFacts, name: str, path: str) -> RestorePointRow:
    """The restore point the control plane recorded under `name`; refused when there is none."""
    point = next((p for p in facts.restore_points if p.name == name), None)
    if point is not None:
        return point
    known = [p.name for p in facts.restore_points]
    listed = f" (recorded: {', '.join(known[-10:])})" if known else ""
    raise _refuse(
        f"{path}.target",
        f"no restore point {name} was recorded for {facts.source}{listed}: create one with "
        f"POST {facts.restore_points_path}, or {_INSTEAD}",
    )


def set_for_name(
    entries: list[pgb_info.CatalogEntry],
    point: RestorePointRow,
    path: str,
    label: str | None,
) -> pgb_info.CatalogEntry:
    """The set a restore point is reached from: the newest that is consistent before it, of
    its database system, on the way to its timeline; else refused with the reason."""
    value = pgb_info.lsn_value(point.lsn)
    stops = [e.lsn_stop for e in entries if e.lsn_stop is not None]
    earliest = min(stops, key=pgb_info.lsn_value) if stops else None
    if earliest is None or value <= pgb_info.lsn_value(earliest):
        raise _refuse(
            f"{path}.target",
            f"restore point {point.name} ({point.lsn}, {point.time.isoformat()}) lies before "
            f"the recovery window, which starts at {earliest or '?'} (where the oldest backup "
            "set ends): it cannot be restored from this repository",
        )
    if label and label != "latest":
        chosen = next(e for e in entries if e.label == label)
        problem = set_problem(chosen, point)
        if problem is not None:
            raise _refuse(f"{path}.set", problem)
        return chosen
    reaching = [e for e in entries if set_problem(e, point) is None]
    if reaching:
        return max(reaching, key=_lsn_order)
    before = [e for e in entries if e.lsn_stop and pgb_info.lsn_value(e.lsn_stop) < value]
    why = set_problem(max(before, key=_lsn_order), point) if before else None
    raise _refuse(
        f"{path}.target",
        f"no backup set of this repository leads to restore point {point.name} "
        f"({point.lsn} on timeline {point.timeline})" + (f": {why}" if why else ""),
    )


def _lsn_order(entry: pgb_info.CatalogEntry) -> tuple[int, datetime, str]:
    return (pgb_info.lsn_value(entry.lsn_stop or "0/0"), entry.stopped_at, entry.label)


def set_problem(entry: pgb_info.CatalogEntry, point: RestorePointRow) -> str | None:
    """Why recovery from `entry` cannot reach `point`, or None when it can."""
    if entry.system_id is not None and entry.system_id != point.system_identifier:
        return (
            f"set {entry.label} is of database system {entry.system_id}, the restore point of "
            f"{point.system_identifier} (the node was made from another node's backup since)"
        )
    stop = pgb_info.lsn_value(entry.lsn_stop) if entry.lsn_stop else None
    if stop is None or stop >= pgb_info.lsn_value(point.lsn):
        return f"set {entry.label} ends after the restore point"
    timeline = set_timeline(entry)
    if timeline == point.timeline:
        return None
    switch = dict(point.timeline_history).get(timeline) if timeline is not None else None
    if switch is not None and stop <= pgb_info.lsn_value(switch):
        return None  # its timeline leads to the restore point's, after this set ends
    return (
        f"set {entry.label} is on timeline {timeline or '?'}, which does not lead to the "
        f"restore point on timeline {point.timeline}"
    )


def set_timeline(entry: pgb_info.CatalogEntry) -> int | None:
    """The timeline a set ended on (from the name of its last WAL segment)."""
    segment = entry.wal_stop or entry.wal_start
    try:
        return int(segment[:8], 16) if segment else None
    except ValueError:
        return None


def name_timeline(point: RestorePointRow, given: str | None, path: str) -> str:
    """The timeline recovery must follow: the restore point's own (a later timeline that forked
    before it, by an earlier restore, never reaches it)."""
    if given is not None and not (given.isdigit() and int(given) == point.timeline):
        raise _refuse(
            f"{path}.target-timeline",
            f"restore point {point.name} lies on timeline {point.timeline}: leave "
            "target-timeline out (the control plane follows that timeline)",
        )
    return str(point.timeline)


def xid_commit(facts: TargetFacts, xid: str, path: str) -> tuple[datetime, ArchiveEnd]:
    """When transaction `xid` committed on the live source (which has archived past it since);
    refused, saying what to do instead, when that is not known."""
    found, where = facts.xid, facts.source
    if found is None:
        message = (
            f"cannot check transaction {xid}: {where} is not running or not managed here (whether "
            f"and when it committed is read from the live source); {_INSTEAD}"
        )
    elif found.status == "not assigned":
        message = (
            f"transaction {xid} has not happened yet on {where} (its next transaction id is "
            f"{found.next_xid})"
        )
    elif found.status == "aborted":
        message = f"transaction {xid} was rolled back on {where}: recovery never stops at it"
    elif found.status == "in progress":
        message = f"transaction {xid} has not committed yet on {where}; wait until it commits"
    elif found.status == "too old":
        message = f"transaction {xid} is too old for {where} to tell if it committed; {_INSTEAD}"
    elif found.committed_at is None:
        message = (
            f"the commit time of transaction {xid} is unknown on {where} (commit timestamps are "
            f"kept for recent transactions only); {_INSTEAD}"
        )
    elif found.archive_end is None:
        message = (
            f"{where} could not confirm that its WAL up to transaction {xid} reached the "
            f"repository (is archiving working?); retry, or {_INSTEAD}"
        )
    else:
        committed_at = found.committed_at
        if committed_at.tzinfo is None:
            committed_at = committed_at.replace(tzinfo=UTC)
        return committed_at, found.archive_end
    raise _refuse(f"{path}.target", message)


def set_for_xid(
    entries: list[pgb_info.CatalogEntry],
    committed_at: datetime,
    end: ArchiveEnd,
    xid: str,
    path: str,
    label: str | None,
) -> pgb_info.CatalogEntry:
    """The set an xid target restores from: the newest consistent before its commit, which
    must lie inside the recovery window."""
    earliest = entries[0].stopped_at
    if committed_at < earliest + STOP_SLACK or committed_at > end.time:
        raise _refuse(
            f"{path}.target",
            f"transaction {xid} committed at {committed_at.isoformat()}, outside the recovery "
            f"window {(earliest + STOP_SLACK).isoformat()} .. {end.time.isoformat()}",
        )
    if label and label != "latest":
        chosen = next(e for e in entries if e.label == label)
        if chosen.stopped_at + STOP_SLACK > committed_at:
            raise _refuse(f"{path}.set", f"set {label} ends after transaction {xid} committed")
        return chosen
    found = pgb_info.choose_set_for_time(entries, committed_at - STOP_SLACK)
    assert found is not None  # committed_at >= earliest + slack guarantees one
    return found
