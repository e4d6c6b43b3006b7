"""Choosing the set and checking the target of a restore before anything is touched."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.errors import InvalidInputError
from controlplane.pgbackrest.info import lsn_value
from controlplane.workflows.restore_source import ArchiveEnd, decide
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
