"""Parsing of recorded `pgbackrest info --output=json` into the backup catalog.

The recordings in tests/unit/data/ are real pgBackRest 2.45 output from a PG15 scratch
cluster with two posix repositories (repo1 plain, repo2 aes-256-cbc): `info_two_repos.json`
(full, diff, incr on repo1 with annotations, a full on repo2, a later incr on repo1),
`info_backup_running.json` (taken while a backup held the lock), `info_no_backups.json`
(stanza created, no backup), `info_missing_stanza.json` (before stanza-create),
`info_repo_errors.json` (repo1 without stanza, repo2 an unreachable s3 bucket) and
`info_set.json` (`info --set=<incr label>`). `info_notes_sample.json` is the sample in
notes/components.md.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest

from controlplane.pgbackrest.info import (
    CatalogEntry,
    StanzaInfo,
    catalog,
    choose_set_for_lsn,
    choose_set_for_time,
    current_system_id,
    find_by_task,
    lsn_value,
    parse_info,
    recovery_window,
    stanza_problem,
)

DATA = Path(__file__).parent / "data"
REPOS = {1: "main", 2: "vault"}
TASK = "0193a1f0-0000-7000-8000-00000000000"


def load(name: str) -> StanzaInfo:
    """Parse a recording that holds exactly one stanza."""
    stanzas = parse_info((DATA / name).read_bytes())
    assert len(stanzas) == 1
    return stanzas[0]


def entries() -> list[CatalogEntry]:
    """The catalog of the two-repository recording."""
    return catalog(load("info_two_repos.json"), REPOS)


def at(epoch: int) -> datetime:
    """A UTC datetime from epoch seconds."""
    return datetime.fromtimestamp(epoch, UTC)


def test_parse_two_repos() -> None:
    """Every backup, repo, db and archive entry of the recording is decoded."""
    stanza = load("info_two_repos.json")
    assert stanza.name == "db"
    assert stanza.cipher == "mixed"
    assert [repo.key for repo in stanza.repo] == [1, 2]
    assert [(b.type, b.database.repo_key) for b in stanza.backup] == [
        ("full", 1),
        ("diff", 1),
        ("incr", 1),
        ("full", 2),
        ("incr", 1),
    ]
    assert [a.database.repo_key for a in stanza.archive] == [1, 2]
    assert stanza.archive[0].min == "000000010000000000000001"


def test_system_id_is_exact() -> None:
    """The 64-bit system-id survives decoding exactly (it exceeds 2^53)."""
    raw = (DATA / "info_two_repos.json").read_text()
    literal = int(re.search(r'"system-id":(\d+)', raw).group(1))  # type: ignore[union-attr]
    stanza = load("info_two_repos.json")
    assert literal > 2**53
    assert {db.system_id for db in stanza.db} == {literal}
    assert current_system_id(stanza) == literal


def test_catalog_oldest_first_with_repository_ids() -> None:
    """The catalog is ordered by stop time and names each backup's repository by our id."""
    got = entries()
    assert [(e.type, e.repository_id) for e in got] == [
        ("full", "main"),
        ("diff", "main"),
        ("incr", "main"),
        ("full", "vault"),
        ("incr", "main"),
    ]
    stops = [e.stopped_at for e in got]
    assert stops == sorted(stops)
    assert all(e.started_at <= e.stopped_at and e.stopped_at.tzinfo == UTC for e in got)


def test_catalog_entry_fields() -> None:
    """One entry carries label, LSNs, WAL range, sizes, prior, annotations and task id."""
    raw = json.loads((DATA / "info_two_repos.json").read_text())[0]["backup"][2]
    incr = entries()[2]
    assert incr.label == raw["label"]
    assert incr.prior == raw["prior"]
    assert (incr.lsn_start, incr.lsn_stop) == (raw["lsn"]["start"], raw["lsn"]["stop"])
    assert (incr.wal_start, incr.wal_stop) == (raw["archive"]["start"], raw["archive"]["stop"])
    assert incr.size == raw["info"]["size"]
    assert incr.repository_size == raw["info"]["repository"]["size"]
    assert incr.started_at == at(raw["timestamp"]["start"])
    assert incr.annotations == {
        "by": "alice",
        "controlplane_task_id": TASK + "3",
        "ticket": "OPS-12",
    }
    assert incr.task_id == TASK + "3"
    assert incr.system_id == current_system_id(load("info_two_repos.json"))


def test_catalog_unknown_repo_key() -> None:
    """A repo key missing from the mapping is reported as repo<key> instead of failing."""
    got = catalog(load("info_two_repos.json"), {1: "main"})
    assert {e.repository_id for e in got} == {"main", "repo2"}


def test_catalog_sorts_by_stop_then_label() -> None:
    """pgBackRest's own order is not trusted: backups are sorted by stop time, then label."""
    stanza = load("info_two_repos.json")
    shuffled = msgspec.structs.replace(stanza, backup=list(reversed(stanza.backup)))
    assert [e.label for e in catalog(shuffled, REPOS)] == [e.label for e in entries()]


def test_block_incremental_without_repository_size() -> None:
    """A backup whose info.repository has no size (block incremental) parses with None."""
    raw = json.loads((DATA / "info_notes_sample.json").read_text())
    raw[0]["backup"][0]["info"]["repository"] = {"delta": 1, "size-map": 2, "delta-map": 3}
    stanza = parse_info(json.dumps(raw).encode())[0]
    assert catalog(stanza, {1: "posix"})[0].repository_size is None


def test_find_by_task() -> None:
    """A backup is found by the task id annotated on it; an unknown id finds nothing."""
    got = entries()
    found = find_by_task(got, TASK + "4")
    assert found is not None and found.repository_id == "vault" and found.type == "full"
    assert find_by_task(got, "no-such-task") is None


def test_recovery_window() -> None:
    """The window runs from the oldest backup's stop to the later of newest stop and last WAL."""
    got = entries()
    window = recovery_window(got, last_archived_at=None)
    assert window is not None
    assert (window.earliest, window.latest) == (got[0].stopped_at, got[-1].stopped_at)
    later = got[-1].stopped_at + timedelta(minutes=5)
    window = recovery_window(got, last_archived_at=later)
    assert window is not None and window.latest == later
    earlier = got[0].stopped_at - timedelta(days=1)
    window = recovery_window(got, last_archived_at=earlier)
    assert window is not None and window.latest == got[-1].stopped_at


def test_recovery_window_none_without_backups() -> None:
    """With no backups there is no window, whatever WAL was archived."""
    empty = catalog(load("info_no_backups.json"), REPOS)
    assert empty == []
    assert recovery_window(empty, last_archived_at=datetime.now(UTC)) is None


def test_choose_set_for_time() -> None:
    """The newest backup stopped at or before the target is chosen; before all -> None."""
    got = entries()
    assert choose_set_for_time(got, got[0].stopped_at - timedelta(seconds=1)) is None
    assert choose_set_for_time(got, got[0].stopped_at) == got[0]
    assert choose_set_for_time(got, got[2].stopped_at + timedelta(microseconds=1)) == got[2]
    assert choose_set_for_time(got, got[-1].stopped_at + timedelta(days=1)) == got[-1]


def test_lsn_value_orders_like_postgres() -> None:
    """LSNs compare by their 64-bit value, not as text (`0/A0` > `0/9F`, `1/0` > `0/FFFFFFFF`)."""
    assert lsn_value("0/A0") > lsn_value("0/9F")
    assert lsn_value("1/0") > lsn_value("0/FFFFFFFF")
    assert lsn_value("16/B374D848") == (0x16 << 32) | 0xB374D848


def test_choose_set_for_lsn() -> None:
    """The newest backup whose stop LSN is at or before the target; before all -> None."""
    got = entries()
    stops = [lsn_value(e.lsn_stop) for e in got if e.lsn_stop]
    assert len(stops) == len(got)
    assert choose_set_for_lsn(got, stops[0] - 1) is None
    assert choose_set_for_lsn(got, stops[0]) == got[0]
    assert choose_set_for_lsn(got, stops[-1] + 1) == got[-1]
    for index in range(1, len(got)):
        assert choose_set_for_lsn(got, stops[index] - 1) == got[index - 1]


def test_choose_set_for_time_accepts_other_timezones_and_refuses_naive() -> None:
    """An aware target in any zone works; a naive one is refused rather than guessed."""
    got = entries()
    target = got[1].stopped_at.astimezone(timezone(timedelta(hours=-4)))
    assert target.utcoffset() == timedelta(hours=-4)
    assert choose_set_for_time(got, target) == got[1]
    with pytest.raises(ValueError, match="timezone"):
        choose_set_for_time(got, got[1].stopped_at.replace(tzinfo=None))


def test_stanza_problem_ok_and_empty() -> None:
    """A healthy stanza, an empty one and one with a backup running are not problems."""
    for name in ("info_two_repos.json", "info_no_backups.json", "info_backup_running.json"):
        assert stanza_problem(load(name)) is None


def test_stanza_problem_missing_stanza() -> None:
    """Before stanza-create, info exits 0 but the status says the stanza path is missing."""
    stanza = load("info_missing_stanza.json")
    assert stanza.status.code == 1
    problem = stanza_problem(stanza, REPOS)
    assert problem is not None
    assert problem.startswith("missing stanza path")
    assert "repository main" in problem and "repository vault" in problem


def test_stanza_problem_per_repo_errors() -> None:
    """Status 4 names each failing repository with pgBackRest's own message."""
    problem = stanza_problem(load("info_repo_errors.json"), {1: "posix", 2: "s3"})
    assert problem is not None
    assert problem.startswith("the stanza differs across repositories")
    assert "repository posix: missing stanza path" in problem
    assert "repository s3: repository error: [HostConnectError]" in problem


def test_stanza_problem_mixed_but_healthy() -> None:
    """Status 4 where every repository is ok or merely empty is not a problem."""
    raw = json.loads((DATA / "info_two_repos.json").read_text())
    raw[0]["status"].update(code=4, message="different across repos")
    raw[0]["repo"][1]["status"] = {"code": 2, "message": "no valid backups"}
    assert stanza_problem(parse_info(json.dumps(raw).encode())[0]) is None


@pytest.mark.parametrize(
    ("code", "words"),
    [(3, "missing stanza data"), (5, "system-id mismatch"), (6, "not found"), (99, "cannot")],
)
def test_stanza_problem_codes(code: int, words: str) -> None:
    """Each blocking stanza status code is put into words."""
    raw = json.loads((DATA / "info_notes_sample.json").read_text())
    raw[0]["status"].update(code=code, message="other")
    problem = stanza_problem(parse_info(json.dumps(raw).encode())[0])
    assert problem is not None and words in problem


def test_lock_held_recording() -> None:
    """The recording taken during a backup shows the backup lock held."""
    status = load("info_backup_running.json").status
    assert status.lock is not None and status.lock.backup is not None
    assert status.lock.backup.held is True
    assert load("info_two_repos.json").status.lock.backup.held is False  # type: ignore[union-attr]


def test_current_system_id_uses_highest_db_id() -> None:
    """After a database change the newest db history entry gives the current system id."""
    raw = json.loads((DATA / "info_notes_sample.json").read_text())
    raw[0]["db"].append({"id": 2, "repo-key": 1, "system-id": 7710532209759220999, "version": "15"})
    assert current_system_id(parse_info(json.dumps(raw).encode())[0]) == 7710532209759220999
    assert current_system_id(load("info_missing_stanza.json")) is None


def test_set_output_with_extra_fields() -> None:
    """`info --set` adds database-ref, link and tablespace: unknown fields are tolerated."""
    stanza = load("info_set.json")
    assert len(stanza.backup) == 1 and stanza.backup[0].type == "incr"
    assert catalog(stanza, REPOS)[0].task_id == TASK + "3"


def test_notes_sample() -> None:
    """The sample in notes/components.md parses into one incr entry."""
    stanza = load("info_notes_sample.json")
    (entry,) = catalog(stanza, {1: "posix"})
    assert entry.type == "incr" and entry.prior == "20261121-080301F"
    assert entry.system_id == 7710532209759220114
    assert entry.task_id is None and entry.annotations == {}
    assert entry.stopped_at == at(1795248188)
