"""Choosing the set and checking the target of a restore before anything is touched."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from controlplane.errors import InvalidInputError
from controlplane.nodes.restore_source import ArchiveEnd, decide
from controlplane.nodes.restore_targets import (
    TargetFacts,
    XidFacts,
    XidStatus,
    full_xid,
    parse_timeline_history,
)
from controlplane.pgbackrest.info import lsn_value
from controlplane.spec.restore_options import target_problem
from controlplane.store.restore_points import RestorePointRow
from tests.unit.test_pgbackrest_info import entries

PATH = "restore_config.restore_options"


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _refused(options: dict[str, str], latest: ArchiveEnd | None = None) -> list[str]:
    with pytest.raises(InvalidInputError) as caught:
        decide(entries(), options, latest=latest, path=PATH)
    return [e["path"] for e in caught.value.errors]


def test_lsn_target_picks_the_newest_set_consistent_before_it() -> None:
    """An LSN just before the second set's stop restores from the first set, with the LSN as
    the recovery target."""
    got = entries()
    target = _lsn(lsn_value(got[1].lsn_stop or "") - 1)
    plan = decide(got, {"type": "lsn", "target": target}, latest=None, path=PATH)
    assert (plan.set_label, plan.target_type, plan.target) == (got[0].label, "lsn", target)


def test_lsn_target_outside_the_window_is_refused_on_its_path() -> None:
    """Before the first set's consistent point, or past the end of the archive: 422."""
    got = entries()
    first = lsn_value(got[0].lsn_stop or "")
    last = lsn_value(got[-1].lsn_stop or "")
    end = ArchiveEnd(time=got[-1].stopped_at + timedelta(minutes=1), lsn=_lsn(last + 100))
    assert _refused({"type": "lsn", "target": _lsn(first - 1)}) == [f"{PATH}.target"]
    assert _refused({"type": "lsn", "target": _lsn(last + 101)}, end) == [f"{PATH}.target"]
    plan = decide(got, {"type": "lsn", "target": _lsn(last + 100)}, latest=end, path=PATH)
    assert plan.set_label == got[-1].label


def test_lsn_target_with_a_set_that_ends_after_it_is_refused() -> None:
    """Naming a set whose consistent point lies after the target cannot work: 422 on `set`."""
    got = entries()
    target = _lsn(lsn_value(got[1].lsn_stop or "") - 1)
    options = {"type": "lsn", "target": target, "set": got[1].label}
    assert _refused(options) == [f"{PATH}.set"]


def test_time_target_past_the_archive_end_is_refused() -> None:
    """The archive's end bounds a time target as it bounds an LSN target."""
    got = entries()
    end = ArchiveEnd(time=got[-1].stopped_at + timedelta(minutes=1), lsn="FF/0")
    late = (end.time + timedelta(seconds=1)).isoformat()
    assert _refused({"type": "time", "target": late}, end) == [f"{PATH}.target"]


# -- name targets ------------------------------------------------------------------------------
SYSTEM_ID = 7710543172236887535  # the recording's database system
SOURCE = "node n1 of db1"
POINTS_PATH = "/v1/databases/db1/nodes/n1/restore-points"


def _point(
    name: str,
    lsn: str,
    *,
    timeline: int = 1,
    history: list[tuple[int, str]] | None = None,
    system_identifier: int = SYSTEM_ID,
) -> RestorePointRow:
    return RestorePointRow(
        database_id="db1",
        node_name="n1",
        name=name,
        lsn=lsn,
        timeline=timeline,
        timeline_history=history or [],
        system_identifier=system_identifier,
        time=entries()[-1].stopped_at,
        created_by="admin",
    )


def _names(*points: RestorePointRow) -> TargetFacts:
    return TargetFacts(source=SOURCE, restore_points_path=POINTS_PATH, restore_points=points)


def _refused_with(options: dict[str, str], facts: TargetFacts) -> list[dict[str, str]]:
    with pytest.raises(InvalidInputError) as caught:
        decide(entries(), options, latest=None, path=PATH, facts=facts)
    return caught.value.errors


def test_name_target_picks_the_newest_set_that_ends_before_the_restore_point() -> None:
    """A restore point between the diff's and the first incr's end restores from the diff, to
    the name, following the restore point's own timeline."""
    got = entries()
    facts = _names(_point("other", "0/A000000"), _point("before-upgrade", "0/6000000"))
    options = {"type": "name", "target": "before-upgrade"}
    plan = decide(got, options, latest=None, path=PATH, facts=facts)
    assert (plan.set_label, plan.target_type, plan.target) == (
        got[1].label,
        "name",
        "before-upgrade",
    )
    assert plan.target_timeline == "1"
    assert plan.backup_system_id == SYSTEM_ID


def test_unknown_name_is_refused_saying_how_to_make_one() -> None:
    """A name the control plane never recorded for the source node is 422 on the target, and
    the message names the endpoint that creates restore points."""
    errors = _refused_with({"type": "name", "target": "nope"}, _names(_point("a", "0/6000000")))
    assert [e["path"] for e in errors] == [f"{PATH}.target"]
    assert POINTS_PATH in errors[0]["message"]
    assert "recorded: a" in errors[0]["message"]


def test_restore_point_before_the_recovery_window_is_refused() -> None:
    """A restore point at or before the oldest set's end cannot be reached: 422 on target."""
    first_stop = entries()[0].lsn_stop or ""
    for lsn in ("0/2000000", first_stop):
        errors = _refused_with({"type": "name", "target": "old"}, _names(_point("old", lsn)))
        assert [e["path"] for e in errors] == [f"{PATH}.target"]
        assert "before the recovery window" in errors[0]["message"]


def test_restore_point_of_another_database_system_is_refused() -> None:
    """A restore point written before the node became another system (restored from another
    node's backup) is not in these sets' history: 422 on target."""
    facts = _names(_point("gone", "0/6000000", system_identifier=42))
    errors = _refused_with({"type": "name", "target": "gone"}, facts)
    assert [e["path"] for e in errors] == [f"{PATH}.target"]
    assert "database system" in errors[0]["message"]


def test_restore_point_on_a_later_timeline_uses_only_sets_on_its_history() -> None:
    """A restore point on timeline 2, which left timeline 1 at 0/6000000, restores from the
    newest set that ended before the fork, not from a later set of the abandoned timeline."""
    got = entries()
    point = _point("after-restore", "0/C000000", timeline=2, history=[(1, "0/6000000")])
    options = {"type": "name", "target": "after-restore"}
    plan = decide(got, options, latest=None, path=PATH, facts=_names(point))
    assert plan.set_label == got[1].label
    assert plan.target_timeline == "2"
    unknown_history = _point("lost-history", "0/C000000", timeline=2)
    errors = _refused_with({"type": "name", "target": "lost-history"}, _names(unknown_history))
    assert [e["path"] for e in errors] == [f"{PATH}.target"]
    assert "timeline" in errors[0]["message"]


def test_name_target_with_a_set_or_timeline_that_cannot_reach_it_is_refused() -> None:
    """A named set ending after the restore point is 422 on `set`; another timeline than the
    restore point's is 422 on `target-timeline`."""
    got = entries()
    facts = _names(_point("p", "0/6000000"))
    errors = _refused_with({"type": "name", "target": "p", "set": got[2].label}, facts)
    assert [e["path"] for e in errors] == [f"{PATH}.set"]
    options = {"type": "name", "target": "p", "target_timeline": "latest"}
    errors = _refused_with(options, facts)
    assert [e["path"] for e in errors] == [f"{PATH}.target-timeline"]
    plan = decide(got, {**options, "target_timeline": "1"}, latest=None, path=PATH, facts=facts)
    assert plan.set_label == got[1].label


def test_name_and_xid_targets_without_facts_are_passed_on_unchecked() -> None:
    """Callers that gather no facts keep the old behaviour: the latest set, the target as is."""
    got = entries()
    for options in ({"type": "name", "target": "x"}, {"type": "xid", "target": "1234"}):
        plan = decide(got, options, latest=None, path=PATH)
        assert (plan.set_label, plan.target) == (got[-1].label, options["target"])


# -- xid targets -------------------------------------------------------------------------------
def _xid(
    status: XidStatus = "committed",
    committed_at: datetime | None = None,
    end: ArchiveEnd | None = None,
) -> TargetFacts:
    got = entries()
    end = end or ArchiveEnd(time=got[-1].stopped_at + timedelta(minutes=5), lsn="0/F000000")
    facts = XidFacts(status=status, next_xid=2000, committed_at=committed_at, archive_end=end)
    return TargetFacts(source=SOURCE, restore_points_path=POINTS_PATH, xid=facts)


def test_xid_target_restores_from_the_newest_set_consistent_before_its_commit() -> None:
    """A commit two seconds after the diff ended restores from the diff; one within a second
    of its end (pgBackRest's stop time is truncated) from the set before."""
    got = entries()
    options = {"type": "xid", "target": "1234"}
    later = _xid(committed_at=got[1].stopped_at + timedelta(seconds=2))
    plan = decide(got, options, latest=None, path=PATH, facts=later)
    assert (plan.set_label, plan.target_type, plan.target) == (got[1].label, "xid", "1234")
    close = _xid(committed_at=got[1].stopped_at + timedelta(milliseconds=500))
    assert decide(got, options, latest=None, path=PATH, facts=close).set_label == got[0].label


def test_xid_target_committed_outside_the_window_is_refused() -> None:
    """Before the first set is consistent, or after the archive's end: 422 on target."""
    got = entries()
    options = {"type": "xid", "target": "1234"}
    early = _xid(committed_at=got[0].stopped_at)
    assert [e["path"] for e in _refused_with(options, early)] == [f"{PATH}.target"]
    end = ArchiveEnd(time=got[-1].stopped_at, lsn="0/F000000")
    late = _xid(committed_at=got[-1].stopped_at + timedelta(seconds=5), end=end)
    assert [e["path"] for e in _refused_with(options, late)] == [f"{PATH}.target"]


@pytest.mark.parametrize(
    ("facts", "words"),
    [
        (
            TargetFacts(source=SOURCE, restore_points_path=POINTS_PATH),
            "use a time or lsn target",
        ),
        (_xid("aborted"), "rolled back"),
        (_xid("in progress"), "not committed yet"),
        (_xid("not assigned"), "next transaction id is 2000"),
        (_xid("too old"), "use a time or lsn target"),
        (_xid("committed", committed_at=None), "use a time or lsn target"),
    ],
)
def test_xid_target_that_cannot_be_checked_is_refused_saying_why(
    facts: TargetFacts, words: str
) -> None:
    """An unreachable source, a transaction that never committed or is unknown, or an unknown
    commit time: 422 on target, with what to do instead."""
    errors = _refused_with({"type": "xid", "target": "1234"}, facts)
    assert [e["path"] for e in errors] == [f"{PATH}.target"]
    assert words in errors[0]["message"]


def test_xid_commit_not_confirmed_in_the_archive_is_refused() -> None:
    """When the source could not archive past the commit, the target is not restorable yet."""
    moment = entries()[1].stopped_at + timedelta(seconds=5)
    facts = TargetFacts(
        source=SOURCE,
        restore_points_path=POINTS_PATH,
        xid=XidFacts(status="committed", next_xid=2000, committed_at=moment),
    )
    errors = _refused_with({"type": "xid", "target": "1234"}, facts)
    assert "reached the repository" in errors[0]["message"]


def test_32_bit_xids_are_mapped_into_the_right_epoch() -> None:
    """Below the next id: this epoch; at or above it: the previous epoch, or not assigned yet
    in epoch 0."""
    assert full_xid(1000, 2000) == 1000
    assert full_xid(2000, 2000) is None
    assert full_xid(5000, 2000) is None
    next_full = (3 << 32) | 2000
    assert full_xid(1000, next_full) == (3 << 32) | 1000
    assert full_xid(4_000_000_000, next_full) == (2 << 32) | 4_000_000_000


def test_timeline_history_file_is_parsed_oldest_first() -> None:
    """Every `parent switchpoint reason` line, comments and blanks skipped."""
    text = (
        "1\t0/3000158\tno recovery target specified\n\n# comment\n2\t0/a0000a0\tat restore point\n"
    )
    assert parse_timeline_history(text) == [(1, "0/3000158"), (2, "0/A0000A0")]


def test_xid_and_name_target_values_are_checked_in_the_request() -> None:
    """xid targets are 32-bit normal ids (3 … 2^32-1); names follow the restore point rule."""
    assert target_problem("xid", "3") is None
    assert target_problem("xid", "4294967295") is None
    assert target_problem("xid", "2") is not None
    assert target_problem("xid", "4294967296") is not None
    assert target_problem("name", "before-upgrade.2") is None
    assert target_problem("name", "with space") is not None
    assert target_problem("name", "-leading") is not None
