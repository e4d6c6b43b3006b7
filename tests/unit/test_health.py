"""Database health from the instances' observations: what counts as failing archiving or a
subscription down, and the grace before either degrades the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from controlplane.server.health import Since, assess, problems_of
from controlplane.server.instance_facts import (
    ArchiverFacts,
    InstanceFacts,
    SubscriptionFacts,
    error_entries,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GRACE = 60.0


def archiver(**fields: Any) -> ArchiverFacts:
    values: dict[str, Any] = {
        "archived_count": 10,
        "failed_count": 0,
        "last_archived_time": T0,
        "last_failed_time": None,
        "last_failed_wal": None,
        "ready_files": 0,
    }
    values.update(fields)
    return ArchiverFacts(**values)


FAILING = archiver(
    failed_count=3,
    last_failed_time=T0 + timedelta(minutes=1),
    last_failed_wal="000000010000000000000005",
    ready_files=2,
    last_error="[047]: unable to create path '/srv/backups/archive': [13] Permission denied",
)


def observed(at: float, *, node: str = "n1", role: str = "primary", **fields: Any) -> InstanceFacts:
    values: dict[str, Any] = {"up": True, "archiver": archiver(), "subscriptions": []}
    values.update(fields)
    return InstanceFacts(
        instance=f"shop-{node}",
        database="shop",
        node=node,
        role=role,
        observed_at=at,
        observed_monotonic=at,
        **values,
    )


def sub(name: str, status: str) -> SubscriptionFacts:
    return SubscriptionFacts(name=name, provider="n2", status=status)


def test_archiving_fails_only_when_the_newest_attempt_failed_and_wal_waits() -> None:
    """A failure newer than the last success (or failures and no success ever) with WAL still
    waiting is failing; an older failure, or one whose WAL left since, is not."""
    assert FAILING.failing
    never = archiver(archived_count=0, last_archived_time=None, failed_count=1,
                     last_failed_time=T0, ready_files=1)  # fmt: skip
    assert never.failing
    recovered = archiver(failed_count=3, last_failed_time=T0 - timedelta(minutes=1), ready_files=1)
    assert not recovered.failing
    drained = archiver(failed_count=3, last_failed_time=T0 + timedelta(minutes=1), ready_files=0)
    assert not drained.failing
    assert not archiver().failing


def test_reasons_name_the_node_the_wal_and_pgbackrest_error() -> None:
    """Failing archiving names the node, the WAL and pgBackRest's error; a subscription that
    is not replicating names itself and its status; a replica's subscriptions are ignored."""
    problems = problems_of(
        observed(
            0, archiver=FAILING, subscriptions=[sub("sub_n1_n2", "down"), sub("ok", "replicating")]
        )
    )
    assert [p.reason for p in problems] == [
        "n1: archiving is failing: 000000010000000000000005 ([047]: unable to create path"
        " '/srv/backups/archive': [13] Permission denied)",
        "n1: subscription sub_n1_n2 is down",
    ]
    disabled = problems_of(observed(0, subscriptions=[sub("sub_n1_n3", "disabled")]))
    assert [p.reason for p in disabled] == ["n1: subscription sub_n1_n3 is down (disabled)"]
    replica = observed(0, role="replica", subscriptions=[sub("sub_n1_n2", "down")])
    assert problems_of(replica) == []


def test_a_problem_degrades_only_after_the_grace() -> None:
    """A problem seen for less than the grace keeps the database healthy; seen without a break
    for the grace, it degrades it; once gone, the database is healthy at once."""
    since: Since = {}
    reasons = []
    for at in (100.0, 130.0, 159.0, 160.0):
        health = assess([observed(at, archiver=FAILING)], since, grace=GRACE)
        since = health.since
        reasons.append(health.reasons)
    assert reasons[:3] == [[], [], []]
    assert len(reasons[3]) == 1 and reasons[3][0].startswith("n1: archiving is failing: ")
    healed = assess([observed(170.0)], since, grace=GRACE)
    assert healed.reasons == [] and healed.since == {} and healed.message is None


def test_a_break_restarts_the_grace() -> None:
    """A subscription that replicates again between two outages starts its grace anew: brief
    retries never add up to a degraded database."""
    since: Since = {}
    for at, status in ((0.0, "down"), (50.0, "down"), (55.0, "replicating"), (60.0, "down")):
        health = assess([observed(at, subscriptions=[sub("s", status)])], since, grace=GRACE)
        since = health.since
    assert not health.degraded
    later = assess([observed(119.0, subscriptions=[sub("s", "down")])], since, grace=GRACE)
    assert not later.degraded
    last = assess([observed(120.0, subscriptions=[sub("s", "down")])], later.since, grace=GRACE)
    assert last.message == "n1: subscription s is down"


def test_an_unanswering_instance_keeps_its_problems() -> None:
    """An instance that did not answer neither clears nor restarts what it showed: the database
    stays degraded for it, while another node's problems are assessed on their own."""
    first = assess([observed(0.0, archiver=FAILING)], {}, grace=GRACE)
    silent = observed(90.0, up=False, archiver=None, error="no answer within 5 s")
    other = observed(90.0, node="n2", subscriptions=[sub("sub_n2_n1", "down")])
    health = assess([silent, other], first.since, grace=GRACE)
    assert health.reasons == [
        "n1: archiving is failing: 000000010000000000000005 ([047]: unable to create path"
        " '/srv/backups/archive': [13] Permission denied)"
    ]
    assert health.since["shop-n1/archiving"].first == 0.0
    assert health.since["shop-n2/subscription/sub_n2_n1"].first == 90.0


def test_pgbackrest_errors_are_read_whole_from_its_log() -> None:
    """Each ERROR entry of a pgBackRest log comes with its indented continuation lines; other
    entries, and a line cut in half by the tail, are left out."""
    log = (
        "ut cut in half\n"
        "2026-03-01 12:00:00.100 P00   INFO: archive-push command begin\n"
        "2026-03-01 12:00:01.200 P00  ERROR: [103]: unable to find a valid repository:\n"
        "                                    repo1: [PathOpenError] unable to list file info for"
        " path '/srv/backups/archive/db/15-1': [13] Permission denied\n"
        "2026-03-01 12:00:02.300 P00   INFO: archive-push command end: aborted with exception\n"
    )
    [entry] = error_entries(log)
    assert entry.startswith("2026-03-01 12:00:01.200 P00  ERROR: [103]")
    assert entry.endswith("[13] Permission denied")
    assert error_entries("2026-03-01 12:00:00.100 P00   INFO: ok\n    more\n") == []
