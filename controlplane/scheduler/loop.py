"""Scheduler: turns due cron ticks of every node's schedules into node_backup tasks (backup
schedules) and drill tasks (`drill` schedules: a restore drill of the node's newest set).

It only inserts tasks. Several servers may run it on one store: a tick is claimed by inserting
its row in `schedule_ticks` (ON CONFLICT DO NOTHING) in the transaction that inserts its task,
so each (database, node, schedule, tick) runs exactly once. A tick that finds the node or its
database busy is recorded as a `skipped` task naming the blocker, never dropped silently.
Cron expressions are evaluated in UTC. After downtime at most the newest missed tick runs
(`catch_up="latest"`), or none of them (`catch_up="none"`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

import msgspec
from croniter import croniter

from controlplane.spec.models import BackupConfig, DatabaseSpec
from controlplane.spec.secrets import join_secrets
from controlplane.store import databases, schedules, tasks
from controlplane.store.databases import DatabaseRow
from controlplane.store.pool import Connection, Pool
from controlplane.store.schedules import Planned, ScheduleKey, ScheduleState
from controlplane.store.tasks import ScheduledTask
from controlplane.system.clock import Clock, SystemClock
from controlplane.tasks.context import Services
from controlplane.tasks.inputs import BackupInput, DrillInput, TaskInput

log = logging.getLogger(__name__)

CatchUp = Literal["latest", "none"]
# The node's effective backup_config (workflows.backups.effective_backup_config), injected like
# the worker's workflows: the scheduler sits below the workflows.
ConfigOf = Callable[[DatabaseSpec, str], BackupConfig | None]

# With catch_up="none", a tick first seen later than this was missed (the servers were down or
# the store unreachable) and is not run.
MISFIRE_GRACE = timedelta(seconds=60)
_EPSILON = timedelta(microseconds=1)
_MIN_SLEEP = 0.01
_BUSY_DATABASE_STATES = frozenset({"creating", "deleting", "modifying", "restoring"})
# When ticks of several schedules of one node coincide, the fuller backup runs, and a drill only
# when no backup is due (it takes the node's backup lock too).
_TYPE_ORDER = {"full": 0, "diff": 1, "incr": 2, "drill": 3}


def tick_at_or_after(cron_expression: str, moment: datetime) -> datetime:
    return croniter(cron_expression, moment - _EPSILON).get_next(datetime)


def tick_at_or_before(cron_expression: str, moment: datetime) -> datetime:
    return croniter(cron_expression, moment + _EPSILON).get_prev(datetime)


def next_run_at(cron_expression: str, now: datetime) -> datetime:
    """The first tick strictly after `now`."""
    return croniter(cron_expression, now).get_next(datetime)


def plan_tick(
    cron_expression: str,
    *,
    since: datetime,
    last_tick_at: datetime | None,
    now: datetime,
    catch_up: CatchUp,
    at_or_after: Callable[[str, datetime], datetime] = tick_at_or_after,
) -> tuple[datetime | None, datetime | None]:
    """(the tick to run now or None, when to look again or None when a tick is due).

    Eligible ticks are at or after `since` (first seen) and after `last_tick_at`; of those due
    by `now` only the newest runs, and with catch_up="none" only if it is not overdue.
    `at_or_after` may be memoised: its arguments only change when a tick is handled.
    """
    floor = since if last_tick_at is None or last_tick_at < since else last_tick_at + _EPSILON
    first = at_or_after(cron_expression, floor)
    if first > now:
        return None, first
    following = at_or_after(cron_expression, first + _EPSILON)
    tick = first if now < following else tick_at_or_before(cron_expression, now)
    if catch_up == "none" and now - tick > MISFIRE_GRACE:
        return None, following if now < following else next_run_at(cron_expression, now)
    return tick, None


def sleep_seconds(now: datetime, next_wake: datetime | None, interval: float) -> float:
    """How long the loop sleeps: until the next due tick, but never longer than `interval`."""
    if next_wake is None:
        return interval
    until = (next_wake - now).total_seconds() + 0.001  # wake just after the tick, not before
    return max(_MIN_SLEEP, min(interval, until))


def planned_schedules(database_id: str, spec: DatabaseSpec, config_of: ConfigOf) -> list[Planned]:
    """Every schedule of every node (a node-level backup_config replaces the database's)."""
    found = []
    for node in spec.nodes:
        config = config_of(spec, node.name)
        for schedule in config.schedules if config is not None else []:
            key = ScheduleKey(database_id, node.name, schedule.id)
            found.append(Planned(key, schedule.type, schedule.cron_expression))
    return found


class Due(NamedTuple):
    key: ScheduleKey
    type: str
    tick_at: datetime


class Busy(NamedTuple):
    """Why a node cannot take a backup now, and the task in the way if there is one."""

    reason: str
    task_id: str | None


class Fired(msgspec.Struct, kw_only=True):
    """A tick this server turned into a task: `pending`, or `skipped` with the reason."""

    key: ScheduleKey
    tick_at: datetime
    task_id: str
    status: str
    reason: str | None
    recorded_at: datetime


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Scheduler:
    """Each pass reads the stored specs, records schedule changes and claims due ticks."""

    def __init__(
        self,
        pool: Pool,
        *,
        backup_steps: Sequence[str],
        config_of: ConfigOf,
        drill_steps: Sequence[str] = (),
        clock: Clock | None = None,
        catch_up: CatchUp = "latest",
        interval: float = 1.0,
        concurrency: int = 4,
        on_fired: Callable[[Fired], None] | None = None,
    ) -> None:
        if catch_up not in ("latest", "none"):
            raise ValueError(f"schedule catch-up must be latest or none, not {catch_up!r}")
        self._pool = pool
        self._steps = {"node_backup": list(backup_steps), "drill": list(drill_steps)}
        self._config_of = config_of
        self._clock: Clock = clock or SystemClock()
        self._catch_up: CatchUp = catch_up
        self._interval = interval
        self._concurrency = concurrency
        self._on_fired = on_fired
        self._plans: dict[str, tuple[datetime, list[Planned]]] = {}
        # croniter takes ~0.2 ms a call; schedules share expressions and ticks, and the
        # arguments of a schedule's look-ups only change when one of its ticks is handled.
        self._at_or_after = functools.lru_cache(maxsize=65536)(tick_at_or_after)
        self.next_wake: datetime | None = None

    @classmethod
    def from_services(
        cls,
        services: Services,
        *,
        backup_steps: Sequence[str],
        config_of: ConfigOf,
        drill_steps: Sequence[str] = (),
    ) -> Scheduler:
        """The scheduler `serve` runs, configured from its settings."""
        settings = services.settings
        return cls(
            services.pool,
            backup_steps=backup_steps,
            drill_steps=drill_steps,
            config_of=config_of,
            catch_up=getattr(settings, "schedule_catch_up", "latest"),
            interval=float(getattr(settings, "schedule_interval", 1.0)),
        )

    async def run(self) -> None:
        """Pass after pass until cancelled; a failed pass (store unreachable) is retried."""
        while True:
            try:
                await self.run_pass()
                delay = sleep_seconds(self._clock.now(), self.next_wake, self._interval)
            except Exception:
                log.exception("scheduler pass failed; retrying")
                delay = self._interval
            await self._clock.sleep(delay)

    async def run_pass(self) -> list[Fired]:
        """Record new, changed and removed schedules, then claim every due tick."""
        # States are read before specs: a state missing from the (newer) specs was removed.
        states = {s.key: s for s in await schedules.list_states(self._pool)}
        rows = await databases.list_databases(self._pool)
        planned = self._plan(rows)
        now = self._clock.now()
        states = await schedules.record_changes(
            self._pool, states, planned, {r.id for r in rows}, now
        )
        return await self._claim_all(await self._due(states, planned, now))

    def _plan(self, rows: list[DatabaseRow]) -> dict[ScheduleKey, Planned]:
        plans = {}
        for row in rows:
            cached = self._plans.get(row.id)
            if cached is None or cached[0] != row.updated_at:
                cached = (row.updated_at, self._plan_database(row))
            plans[row.id] = cached
        self._plans = plans
        return {p.key: p for _, found in plans.values() for p in found}

    def _plan_database(self, row: DatabaseRow) -> list[Planned]:
        try:
            spec = join_secrets(row.spec, {})  # schedules carry no secrets
        except msgspec.ValidationError as exc:
            log.error("database %s: stored spec unreadable, schedules not run: %s", row.id, exc)
            return []
        return planned_schedules(row.id, spec, self._config_of)

    async def _due(
        self,
        states: dict[ScheduleKey, ScheduleState],
        planned: dict[ScheduleKey, Planned],
        now: datetime,
    ) -> list[Due]:
        due: list[Due] = []
        wakes: list[datetime] = []
        for count, (key, plan) in enumerate(planned.items(), 1):
            state = states.get(key)
            if state is None:  # recorded by another server during this pass: next pass
                continue
            tick, wake = plan_tick(
                state.cron_expression,
                since=state.since,
                last_tick_at=state.last_tick_at,
                now=now,
                catch_up=self._catch_up,
                at_or_after=self._at_or_after,
            )
            if tick is not None:
                due.append(Due(key, plan.type, tick))
            elif wake is not None:
                wakes.append(wake)
            if count % 256 == 0:  # fresh look-ups are slow: let the API breathe
                await asyncio.sleep(0)
        self.next_wake = min(wakes, default=None)
        return due

    async def _claim_all(self, due: list[Due]) -> list[Fired]:
        """One transaction per database, several databases at once."""
        groups: dict[str, list[Due]] = {}
        # One order on every server, so that concurrent claims take their row locks alike.
        for item in sorted(due, key=lambda d: (*d.key[:2], _TYPE_ORDER[d.type], d.key[2])):
            groups.setdefault(item.key.database_id, []).append(item)
        gate = asyncio.Semaphore(self._concurrency)

        async def claim(group: list[Due]) -> list[Fired]:
            async with gate:
                return await self._claim_database(group)

        results = await asyncio.gather(*(claim(g) for g in groups.values()), return_exceptions=True)
        fired: list[Fired] = []
        for database_id, result in zip(groups, results, strict=True):
            if isinstance(result, Exception):
                log.error("ticks of %s not claimed (next pass retries): %s", database_id, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                fired += result
        return fired

    async def _claim_database(self, group: list[Due]) -> list[Fired]:
        """Claim the database's due ticks and insert their tasks, in one transaction."""
        database_id = group[0].key.database_id
        ids = {item: tasks.uuid7() for item in group}
        async with self._pool.acquire() as conn, conn.transaction():
            found = await schedules.claim_ticks(
                conn, database_id, [(*d.key[1:], d.tick_at, ids[d]) for d in group]
            )
            if found is None:  # deleted since this pass read it
                return []
            mine = [d for d in group if (d.key.node_name, d.key.schedule_id) in found.claimed]
            blocked = await _blockers(conn, database_id, found, mine)
            inserted = await self._insert(conn, database_id, mine, ids, blocked)
        recorded_at = self._clock.now()
        due_of = {ids[d]: d for d in mine}
        return [self._report(due_of[t.task_id], t, recorded_at) for t in inserted]

    async def _insert(
        self,
        conn: Connection,
        database_id: str,
        mine: list[Due],
        ids: dict[Due, uuid.UUID],
        blocked: dict[str, Busy],
    ) -> list[ScheduledTask]:
        """A backup (or drill) task for the first claimed tick of each free node; the others,
        and those of busy nodes, become skipped tasks naming what blocks them."""
        firsts: dict[str, Due] = {}
        for item in mine:
            if item.key.node_name not in blocked:
                firsts.setdefault(item.key.node_name, item)
        backups = [
            ScheduledTask(ids[d], d.key.node_name, _request(d), type=_task_type(d))
            for d in firsts.values()
        ]
        inserted = await tasks.insert_backup_tasks(conn, database_id, backups, self._steps)
        lost = [b.node_name for b in backups if b.task_id not in inserted]
        if lost:  # a manual backup, verify or expire holds the node's lock
            blocked.update(await _lock_holders(conn, database_id, lost))
        for backup in backups:
            if backup.task_id in inserted:
                blocked[backup.node_name] = _holder(
                    database_id, backup.node_name, backup.type, str(backup.task_id), "pending"
                )
        skipped = [
            ScheduledTask(
                ids[d],
                d.key.node_name,
                _request(d),
                f"schedule {d.key.schedule_id} tick {rfc3339(d.tick_at)} skipped:"
                f" {blocked[d.key.node_name].reason}",
                blocked[d.key.node_name].task_id,
                _task_type(d),
            )
            for d in mine
            if ids[d] not in inserted
        ]
        await tasks.insert_skipped_tasks(conn, database_id, skipped)
        return [b for b in backups if b.task_id in inserted] + skipped

    def _report(self, due: Due, task: ScheduledTask, recorded_at: datetime) -> Fired:
        fired = Fired(
            key=due.key,
            tick_at=due.tick_at,
            task_id=str(task.task_id),
            status="pending" if task.error is None else "skipped",
            reason=task.error,
            recorded_at=recorded_at,
        )
        outcome = "pending" if task.error is None else f"skipped ({task.error})"
        log.info(
            "tick %s of %s: task %s %s",
            rfc3339(due.tick_at),
            "/".join(due.key),
            fired.task_id,
            outcome,
        )
        if self._on_fired is not None:
            self._on_fired(fired)
        return fired


def _task_type(due: Due) -> str:
    return "drill" if due.type == "drill" else "node_backup"


def _request(due: Due) -> dict[str, Any]:
    """The input of a scheduled tick: a node_backup annotated with the schedule's id, or a
    drill of the newest set."""
    schedule_id = due.key.schedule_id
    tick_at = rfc3339(due.tick_at)
    request: TaskInput
    if due.type == "drill":
        request = DrillInput(schedule_id=schedule_id, tick_at=tick_at)
    else:
        request = msgspec.convert(
            {
                "type": due.type,
                "annotations": {"schedule": schedule_id},
                "schedule_id": schedule_id,
                "tick_at": tick_at,
            },
            BackupInput,
        )
    found: dict[str, Any] = msgspec.to_builtins(request)
    return found


def _holder(database_id: str, node: str, type: str, task_id: str, status: str) -> Busy:
    return Busy(
        f"node {node} of database {database_id} has an operation in progress:"
        f" {type} task {task_id} is {status}",
        task_id,
    )


async def _blockers(
    conn: Connection, database_id: str, found: schedules.Claim, mine: list[Due]
) -> dict[str, Busy]:
    """Nodes whose ticks cannot run whatever their lock: the database is busy, or the node has
    no instance (yet)."""
    nodes = {d.key.node_name for d in mine}
    if found.state in _BUSY_DATABASE_STATES:
        reason = f"database {database_id} is {found.state}"
        blocking = await tasks.find_blocking_task(conn, database_id, None, "update")
        if blocking is None:
            return dict.fromkeys(nodes, Busy(reason, None))
        reason += f": {blocking.type} task {blocking.task_id} is {blocking.status}"
        return dict.fromkeys(nodes, Busy(reason, str(blocking.task_id)))
    return {
        node: Busy(f"node {node} of database {database_id} has no instance", None)
        for node in nodes - found.nodes_with_instance
    }


async def _lock_holders(conn: Connection, database_id: str, nodes: list[str]) -> dict[str, Busy]:
    holders = await tasks.active_backup_tasks(conn, database_id, nodes)
    found = {}
    for node in nodes:
        if node in holders:
            task_id, type, status = holders[node]
            found[node] = _holder(database_id, node, type, task_id, status)
        else:  # the holder finished between the insert and this look-up
            found[node] = Busy(f"node {node} of database {database_id} was busy", None)
    return found
