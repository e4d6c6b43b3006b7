"""Schedule records: per-schedule state (first seen, last tick) and one row per claimed tick."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
from msgspec import Struct

from controlplane.models import ScheduleLastTask
from controlplane.store.pool import Connection, Executor

_STATE_COLUMNS = "database_id, node_name, schedule_id, cron_expression, since, last_tick_at"


class ScheduleKey(NamedTuple):
    """What a tick is de-duplicated by, together with the tick time."""

    database_id: str
    node_name: str
    schedule_id: str


class ScheduleState(Struct, kw_only=True, frozen=True):
    """A schedule as the schedulers last recorded it."""

    database_id: str
    node_name: str
    schedule_id: str
    cron_expression: str
    since: datetime
    last_tick_at: datetime | None = None

    @property
    def key(self) -> ScheduleKey:
        return ScheduleKey(self.database_id, self.node_name, self.schedule_id)


class Planned(NamedTuple):
    """A schedule of a node's effective backup_config, as the stored spec says now."""

    key: ScheduleKey
    type: str
    cron_expression: str


def _state(record: asyncpg.Record) -> ScheduleState:
    return ScheduleState(**dict(record.items()))


async def list_states(db: Executor) -> list[ScheduleState]:
    """Every recorded schedule state."""
    records = await db.fetch(f"SELECT {_STATE_COLUMNS} FROM schedules")
    return [_state(r) for r in records]


async def insert_states(db: Executor, states: list[ScheduleState]) -> list[ScheduleState]:
    """Record newly seen schedules; those another server recorded first are left as they are
    (and not returned)."""
    if not states:
        return []
    records = await db.fetch(
        f"INSERT INTO schedules ({_STATE_COLUMNS})"
        " SELECT d, n, s, c, t, NULL FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
        " $5::timestamptz[]) AS u (d, n, s, c, t)"
        f" ON CONFLICT DO NOTHING RETURNING {_STATE_COLUMNS}",
        [s.database_id for s in states],
        [s.node_name for s in states],
        [s.schedule_id for s in states],
        [s.cron_expression for s in states],
        [s.since for s in states],
    )
    return [_state(r) for r in records]


async def change_cron(
    db: Executor, observed: ScheduleState, cron_expression: str, since: datetime
) -> ScheduleState | None:
    """A new cron expression starts the schedule afresh; only if the row is still as observed."""
    record = await db.fetchrow(
        "UPDATE schedules SET cron_expression = $4, since = $5"
        " WHERE (database_id, node_name, schedule_id) = ($1, $2, $3) AND cron_expression = $6"
        f" RETURNING {_STATE_COLUMNS}",
        *observed.key,
        cron_expression,
        since,
        observed.cron_expression,
    )
    return None if record is None else _state(record)


async def delete_state(db: Executor, observed: ScheduleState) -> None:
    """Forget a removed schedule, unless it changed since it was observed (re-added)."""
    await db.execute(
        "DELETE FROM schedules WHERE (database_id, node_name, schedule_id) = ($1, $2, $3)"
        " AND cron_expression = $4 AND since = $5",
        *observed.key,
        observed.cron_expression,
        observed.since,
    )


class StateChanges(NamedTuple):
    new: list[Planned]
    changed: list[tuple[ScheduleState, Planned]]
    removed: list[ScheduleState]


def state_changes(
    states: Mapping[ScheduleKey, ScheduleState],
    planned: Mapping[ScheduleKey, Planned],
    database_ids: set[str],
) -> StateChanges:
    """What to record: schedules first seen, cron expressions changed, schedules removed (only of
    databases in the snapshot: a deleted database's states go with it)."""
    new = [p for key, p in planned.items() if key not in states]
    changed = [
        (states[key], p)
        for key, p in planned.items()
        if key in states and states[key].cron_expression != p.cron_expression
    ]
    removed = [
        s for key, s in states.items() if key not in planned and s.database_id in database_ids
    ]
    return StateChanges(new, changed, removed)


async def record_changes(
    db: Executor,
    states: dict[ScheduleKey, ScheduleState],
    planned: Mapping[ScheduleKey, Planned],
    database_ids: set[str],
    now: datetime,
) -> dict[ScheduleKey, ScheduleState]:
    """Bring the recorded states in line with the specs (`states` read before them) and return
    them. New and changed schedules start at `now`. Every write is conditional on the row as
    read, so a server with an older snapshot of the specs never undoes a newer one."""
    changes = state_changes(states, planned, database_ids)
    fresh = [
        ScheduleState(**p.key._asdict(), cron_expression=p.cron_expression, since=now)
        for p in changes.new
    ]
    for state in await insert_states(db, fresh):
        states[state.key] = state
    for observed, plan in changes.changed:
        del states[observed.key]
        updated = await change_cron(db, observed, plan.cron_expression, now)
        if updated is not None:
            states[updated.key] = updated
    for observed in changes.removed:
        del states[observed.key]
        await delete_state(db, observed)
    return states


class Claim(NamedTuple):
    """What claiming a database's due ticks found: its state, the nodes that have an instance,
    and the (node, schedule id) pairs whose tick this transaction claimed."""

    state: str
    nodes_with_instance: set[str]
    claimed: set[tuple[str, str]]


# Node names and schedule ids never contain "/" (spec patterns).
_PAIR = "node_name || '/' || schedule_id"


async def claim_ticks(
    conn: Connection,
    database_id: str,
    ticks: list[tuple[str, str, datetime, uuid.UUID]],
) -> Claim | None:
    """Claim (node, schedule id, tick, task id) rows of one database in the caller's
    transaction, which must then insert those tasks; None when the database is gone.

    Whoever inserts a tick's row claims it: a concurrent claimant of the same tick waits on its
    key until the first commits, then skips it. A claimed tick also moves its schedule's last
    tick; a tick already behind it (handled before, its row pruned with its task) is dropped.
    The database row is share-locked first, so a concurrent update/delete/restore commits its
    state before the backups are decided.
    """
    record = await conn.fetchrow(
        "WITH db AS (SELECT d.state, array(SELECT i.node_name FROM instances i"
        "   WHERE i.database_id = d.id) AS nodes FROM databases d WHERE d.id = $1 FOR SHARE OF d),"
        " tick AS (INSERT INTO schedule_ticks"
        "   (database_id, node_name, schedule_id, tick_at, task_id)"
        "   SELECT $1, w.node_name, w.schedule_id, w.tick_at, w.task_id"
        "   FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::uuid[])"
        "   AS w (node_name, schedule_id, tick_at, task_id) WHERE EXISTS (SELECT FROM db)"
        "   ON CONFLICT DO NOTHING RETURNING node_name, schedule_id, tick_at),"
        " moved AS (UPDATE schedules s SET last_tick_at = t.tick_at FROM tick t"
        "   WHERE (s.database_id, s.node_name, s.schedule_id) = ($1, t.node_name, t.schedule_id)"
        "   AND s.since <= t.tick_at AND (s.last_tick_at IS NULL OR s.last_tick_at < t.tick_at)"
        "   RETURNING s.node_name, s.schedule_id)"
        f" SELECT db.state, db.nodes, array(SELECT {_PAIR} FROM tick) AS claimed,"
        f"   array(SELECT {_PAIR} FROM moved) AS moved FROM db",
        database_id,
        [node for node, _, _, _ in ticks],
        [schedule_id for _, schedule_id, _, _ in ticks],
        [tick for _, _, tick, _ in ticks],
        [task_id for _, _, _, task_id in ticks],
    )
    if record is None:
        return None
    moved = set(record["moved"])
    stale = set(record["claimed"]) - moved
    await _drop_ticks(conn, database_id, [t for t in ticks if f"{t[0]}/{t[1]}" in stale])
    return Claim(
        state=record["state"],
        nodes_with_instance=set(record["nodes"]),
        claimed={(pair.split("/")[0], pair.split("/")[1]) for pair in moved},
    )


async def _drop_ticks(
    conn: Connection, database_id: str, ticks: list[tuple[str, str, datetime, uuid.UUID]]
) -> None:
    if not ticks:
        return
    await conn.execute(
        "DELETE FROM schedule_ticks k USING unnest($2::text[], $3::text[], $4::timestamptz[])"
        "   AS w (node_name, schedule_id, tick_at)"
        " WHERE (k.database_id, k.node_name, k.schedule_id, k.tick_at)"
        "   = ($1, w.node_name, w.schedule_id, w.tick_at)",
        database_id,
        [t[0] for t in ticks],
        [t[1] for t in ticks],
        [t[2] for t in ticks],
    )


async def last_tasks(db: Executor, database_id: str) -> dict[tuple[str, str], ScheduleLastTask]:
    """(node name, schedule id) -> the task of its newest tick still on record."""
    records = await db.fetch(
        "SELECT DISTINCT ON (k.node_name, k.schedule_id) k.node_name, k.schedule_id,"
        " t.task_id, t.status, t.completed_at"
        " FROM schedule_ticks k JOIN tasks t ON t.task_id = k.task_id"
        " WHERE k.database_id = $1 ORDER BY k.node_name, k.schedule_id, k.tick_at DESC",
        database_id,
    )
    found: dict[tuple[str, str], ScheduleLastTask] = {}
    for r in records:
        found[(r["node_name"], r["schedule_id"])] = ScheduleLastTask(
            task_id=str(r["task_id"]), status=r["status"], completed_at=r["completed_at"]
        )
    return found


async def ticks_of(db: Executor, database_id: str) -> list[dict[str, Any]]:
    """Every recorded tick of a database, oldest first (for tests and benchmarks)."""
    records = await db.fetch(
        "SELECT node_name, schedule_id, tick_at, task_id, claimed_at FROM schedule_ticks"
        " WHERE database_id = $1 ORDER BY tick_at, node_name, schedule_id",
        database_id,
    )
    return [dict(r.items()) for r in records]
