"""Scheduler logic without a store: due ticks, catch-up policy, next run, wake-ups, plans."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from controlplane.nodes.backups import effective_backup_config
from controlplane.scheduler.loop import (
    MISFIRE_GRACE,
    Fired,
    Scheduler,
    next_run_at,
    plan_tick,
    planned_schedules,
    sleep_seconds,
)
from controlplane.spec.models import DatabaseSpec
from controlplane.store.schedules import ScheduleKey, ScheduleState, state_changes
from controlplane.system.clock import ManualClock

T0 = datetime(2030, 5, 6, 10, 0, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


def test_new_schedule_does_not_fire_for_a_tick_before_it_was_seen() -> None:
    """A schedule first seen after today's 03:00 waits for tomorrow's 03:00."""
    tick, wake = plan_tick(
        "0 3 * * *", since=at(minutes=1), last_tick_at=None, now=at(minutes=2), catch_up="latest"
    )
    assert tick is None
    assert wake == datetime(2030, 5, 7, 3, 0, tzinfo=UTC)


def test_tick_is_due_at_its_exact_second_and_not_before() -> None:
    """The 10:05 tick is due at 10:05:00.000 and not a microsecond earlier."""
    since = at(seconds=1)
    before, wake = plan_tick(
        "5 10 * * *",
        since=since,
        last_tick_at=None,
        now=at(minutes=5) - timedelta(microseconds=1),
        catch_up="latest",
    )
    due, _ = plan_tick(
        "5 10 * * *", since=since, last_tick_at=None, now=at(minutes=5), catch_up="latest"
    )
    assert (before, wake) == (None, at(minutes=5))
    assert due == at(minutes=5)


def test_tick_at_the_moment_a_schedule_is_first_seen_runs() -> None:
    """A tick exactly at `since` is eligible (ticks before it are not)."""
    due, _ = plan_tick(
        "* * * * *", since=T0, last_tick_at=None, now=at(seconds=0.5), catch_up="latest"
    )
    assert due == T0


def test_handled_tick_is_not_due_again() -> None:
    """Once a tick is recorded the next wake-up is the following tick."""
    tick, wake = plan_tick(
        "*/5 * * * *", since=T0, last_tick_at=at(minutes=5), now=at(minutes=7), catch_up="latest"
    )
    assert (tick, wake) == (None, at(minutes=10))


def test_catch_up_latest_runs_only_the_newest_missed_tick() -> None:
    """After an hour down, a per-minute schedule runs one tick: the newest."""
    tick, wake = plan_tick(
        "* * * * *",
        since=T0,
        last_tick_at=at(minutes=2),
        now=at(minutes=62, seconds=30),
        catch_up="latest",
    )
    assert (tick, wake) == (at(minutes=62), None)


def test_catch_up_latest_runs_a_daily_tick_missed_hours_ago() -> None:
    """A 03:00 tick missed while down runs at 09:00 under `latest`."""
    since = datetime(2030, 5, 1, tzinfo=UTC)
    last = datetime(2030, 5, 5, 3, tzinfo=UTC)
    tick, _ = plan_tick(
        "0 3 * * *", since=since, last_tick_at=last, now=at(hours=-1), catch_up="latest"
    )
    assert tick == datetime(2030, 5, 6, 3, tzinfo=UTC)


def test_catch_up_none_skips_an_overdue_tick_and_waits_for_the_next() -> None:
    """Under `none` a tick more than the grace late is not run; the next one is awaited."""
    since = datetime(2030, 5, 1, tzinfo=UTC)
    last = datetime(2030, 5, 5, 3, tzinfo=UTC)
    tick, wake = plan_tick(
        "0 3 * * *", since=since, last_tick_at=last, now=at(hours=-1), catch_up="none"
    )
    assert (tick, wake) == (None, datetime(2030, 5, 7, 3, tzinfo=UTC))


def test_catch_up_none_still_runs_a_tick_seen_within_the_grace() -> None:
    """Under `none` a tick seen a little late (a slow pass) still runs."""
    now = T0 + MISFIRE_GRACE - timedelta(seconds=1)
    tick, _ = plan_tick(
        "0 10 * * *", since=at(days=-1), last_tick_at=None, now=now, catch_up="none"
    )
    assert tick == T0
    late = T0 + MISFIRE_GRACE + timedelta(seconds=1)
    missed, _ = plan_tick(
        "0 10 * * *", since=at(days=-1), last_tick_at=None, now=late, catch_up="none"
    )
    assert missed is None


def test_changed_cron_restarts_from_since() -> None:
    """A cron changed at 10:00:30 (since moves) does not run its own earlier 10:00 tick."""
    tick, wake = plan_tick(
        "0 10 * * *",
        since=at(seconds=30),
        last_tick_at=at(minutes=-30),
        now=at(seconds=31),
        catch_up="latest",
    )
    assert (tick, wake) == (None, at(days=1))


def test_next_run_at_is_strictly_after_now_in_utc() -> None:
    """next_run_at is the first tick after now, in UTC, and moves with the cron expression."""
    assert next_run_at("0 3 * * *", T0) == datetime(2030, 5, 7, 3, tzinfo=UTC)
    assert next_run_at("0 10 * * *", T0) == datetime(2030, 5, 7, 10, tzinfo=UTC)
    assert next_run_at("30 11 * * *", T0) == datetime(2030, 5, 6, 11, 30, tzinfo=UTC)
    assert next_run_at("* * * * *", at(seconds=0.5)) == at(minutes=1)
    assert next_run_at("* * * * *", T0).tzinfo is not None


def test_sleep_is_bounded_by_the_interval_and_ends_at_the_next_tick() -> None:
    """The loop sleeps until just after the next tick, at most `interval`, never zero."""
    assert sleep_seconds(T0, None, 1.0) == 1.0
    assert sleep_seconds(T0, at(hours=1), 1.0) == 1.0
    assert sleep_seconds(T0, at(seconds=0.25), 1.0) == pytest.approx(0.251)
    assert sleep_seconds(T0, at(seconds=-5), 1.0) == pytest.approx(0.01)


def _spec(body: dict[str, object]) -> DatabaseSpec:
    return msgspec.convert(body, DatabaseSpec)


def _config(*schedules: tuple[str, str, str]) -> dict[str, object]:
    return {
        "repositories": [{"type": "posix", "base_path": "/srv/repo"}],
        "schedules": [{"id": i, "type": t, "cron_expression": c} for i, t, c in schedules],
    }


def test_node_backup_config_replaces_the_database_schedules() -> None:
    """n2's own backup_config replaces the database's schedules; n1 inherits them."""
    spec = _spec(
        {
            "database_name": "app",
            "backup_config": _config(
                ("nightly", "full", "0 3 * * *"), ("hourly", "incr", "0 * * * *")
            ),
            "nodes": [
                {"name": "n1"},
                {"name": "n2", "backup_config": _config(("weekly", "full", "0 4 * * 0"))},
                {"name": "n3", "backup_config": _config()},
            ],
        }
    )
    planned = planned_schedules("db", spec, effective_backup_config)
    assert [(p.key.node_name, p.key.schedule_id, p.type, p.cron_expression) for p in planned] == [
        ("n1", "nightly", "full", "0 3 * * *"),
        ("n1", "hourly", "incr", "0 * * * *"),
        ("n2", "weekly", "full", "0 4 * * 0"),
    ]
    assert all(p.key.database_id == "db" for p in planned)


def _state(database_id: str, schedule_id: str, cron: str) -> ScheduleState:
    return ScheduleState(
        database_id=database_id,
        node_name="n1",
        schedule_id=schedule_id,
        cron_expression=cron,
        since=T0,
    )


def test_state_changes_find_new_changed_and_removed_schedules() -> None:
    """New schedules are recorded, changed crons restart, removed ones of known databases go."""
    spec = _spec(
        {
            "database_name": "app",
            "backup_config": _config(("keep", "full", "0 3 * * *"), ("moved", "incr", "0 5 * * *")),
            "nodes": [{"name": "n1"}],
        }
    )
    planned = {p.key: p for p in planned_schedules("db", spec, effective_backup_config)}
    recorded = [
        _state("db", "keep", "0 3 * * *"),
        _state("db", "moved", "0 4 * * *"),
        _state("db", "gone", "0 4 * * *"),
        _state("other", "x", "0 4 * * *"),
    ]
    states = {s.key: s for s in recorded}
    changes = state_changes(states, planned, {"db"})
    assert changes.new == []
    assert [(s.schedule_id, p.cron_expression) for s, p in changes.changed] == [
        ("moved", "0 5 * * *")
    ]
    assert [s.key for s in changes.removed] == [ScheduleKey("db", "n1", "gone")]
    fresh = state_changes({}, planned, {"db"})
    assert sorted(p.key.schedule_id for p in fresh.new) == ["keep", "moved"]


class _Stop(Exception):
    pass


class _StoppingClock(ManualClock):
    """Stops the loop after a few sleeps."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        if len(self.slept) >= 3:
            raise _Stop


class _ScriptedScheduler(Scheduler):
    """Passes without a store: the first fails, the next ones see a tick 0.3 s ahead."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(None, backup_steps=[], config_of=effective_backup_config, clock=clock)  # type: ignore[arg-type]
        self.clock = clock
        self.passes = 0

    async def run_pass(self) -> list[Fired]:
        self.passes += 1
        if self.passes == 1:
            raise OSError("store unreachable")
        self.next_wake = self.clock.now() + timedelta(seconds=0.3) if self.passes == 2 else None
        return []


async def test_loop_retries_a_failed_pass_and_wakes_for_the_next_tick() -> None:
    """A failed pass is retried after the interval; the loop then sleeps until the next tick
    and never longer than the interval."""
    clock = _StoppingClock(T0)
    scheduler = _ScriptedScheduler(clock)
    with pytest.raises(_Stop):
        await asyncio.wait_for(scheduler.run(), timeout=5)
    assert scheduler.passes == 3
    assert clock.slept == [1.0, pytest.approx(0.301), 1.0]


def test_manual_clock_refuses_naive_times() -> None:
    """Scheduling math is in aware UTC; a naive time is a bug caught early."""
    with pytest.raises(ValueError):
        ManualClock(datetime(2030, 1, 1))


def test_unknown_catch_up_policy_is_refused() -> None:
    """A misspelt catch-up setting fails at start rather than silently running ticks."""
    with pytest.raises(ValueError, match="catch-up"):
        Scheduler(None, backup_steps=[], config_of=effective_backup_config, catch_up="all")  # type: ignore[arg-type]
