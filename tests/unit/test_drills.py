"""Restore drills without a server: the verify body, the set a drill picks, the result it keeps,
a damaged file named from pgBackRest's words, and drill schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from controlplane.errors import ExternalCommandError, InvalidInputError, MalformedRequestError
from controlplane.models import BackupSet
from controlplane.nodes.drills import DrillCheck, amcheck_problem, drill_result, restore_error
from controlplane.pgbackrest.command import damaged_file
from controlplane.scheduler.loop import Due, _request, _task_type
from controlplane.spec import parse_request, parse_verify_request
from controlplane.spec.models import DatabaseRequest
from controlplane.store.schedules import ScheduleKey
from controlplane.tasks.inputs import BackupInput, DrillInput
from controlplane.workflows.drill_backup import DRILL, pick_set

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
PG_DATA = "/srv/cp/instances/shop-n1.drill/pgdata"
CHECKSUM_ERROR = (
    "drill of set 20260301-020000F of node n1 of shop failed: pgbackrest exited 26 (unexpected "
    "pgbackrest error): ERROR: [026]: raised from local-1 protocol: error restoring "
    f"'{PG_DATA}/base/16385/16550': actual checksum 'fe5589a108ce286f9129033f56c3fc36dd6a8baa' "
    "does not match expected checksum 'ac35a2c23e8f4a40815bc36d7dcdcc67f133071c' [ChecksumError] "
    "on retry after 0ms [ChecksumError] on retry after 15000ms"
)


def problems(body: bytes) -> list[str]:
    with pytest.raises(InvalidInputError) as raised:
        parse_verify_request(body)
    return [e["path"] for e in raised.value.errors]


def test_an_empty_verify_body_is_a_plain_verify() -> None:
    """No body, whitespace and `{}` all mean a verify of every set, no drill."""
    for body in (b"", b"  \n", b"{}"):
        request = parse_verify_request(body)
        assert (request.drill, request.set) == (False, None)


def test_a_drill_body_names_an_optional_set() -> None:
    """`drill` alone drills the newest set; `set` takes a full, diff or incr label."""
    assert parse_verify_request(b'{"drill": true}').set is None
    for label in ("20260301-020000F", "20260301-020000F_20260302-020000D"):
        request = parse_verify_request(msgspec.json.encode({"drill": True, "set": label}))
        assert (request.drill, request.set) == (True, label)


def test_bad_verify_bodies_name_the_field() -> None:
    """A label that is not pgBackRest's, a set without a drill, a wrong type and an unknown
    field are each a 422 at its path; a body that is not an object is malformed."""
    assert problems(b'{"drill": true, "set": "latest"}') == ["set"]
    assert problems(b'{"drill": true, "set": "20260301-020000F\\n"}') == ["set"]
    assert problems(b'{"set": "20260301-020000F"}') == ["set"]
    assert problems(b'{"drill": "yes"}') == ["drill"]
    assert problems(b'{"drill": true, "target": "x"}') == ["target"]
    with pytest.raises(MalformedRequestError):
        parse_verify_request(b"[true]")


def test_schedules_may_be_drills() -> None:
    """A backup_config schedule accepts type drill next to the backup types, nothing else."""
    body: dict[str, Any] = {
        "id": "shop",
        "spec": {
            "database_name": "app",
            "database_users": [{"username": "admin", "password": "pw", "db_owner": True}],
            "nodes": [{"name": "n1", "host_ids": ["local"]}],
            "backup_config": {
                "repositories": [{"type": "posix", "base_path": "/var/backups/cp"}],
                "schedules": [{"id": "weekly", "type": "drill", "cron_expression": "0 4 * * 0"}],
            },
        },
    }
    request = parse_request(msgspec.json.encode(body), DatabaseRequest)
    assert request.spec.backup_config is not None
    assert request.spec.backup_config.schedules[0].type == "drill"
    body["spec"]["backup_config"]["schedules"][0]["type"] = "rehearsal"
    with pytest.raises(InvalidInputError) as raised:
        parse_request(msgspec.json.encode(body), DatabaseRequest)
    assert [e["path"] for e in raised.value.errors] == ["spec.backup_config.schedules[0].type"]


def entry(label: str, stopped: datetime) -> BackupSet:
    return BackupSet(
        label=label,
        type="full",
        repository_id="posix",
        started_at=stopped - timedelta(minutes=5),
        stopped_at=stopped,
    )


def test_a_drill_picks_the_named_set_or_the_newest() -> None:
    """Without a label the newest set by stop time; with one that set, or none when absent."""
    old = entry("20260301-020000F", T0)
    new = entry("20260302-020000F", T0 + timedelta(days=1))
    assert pick_set([new, old], None) is new
    assert pick_set([new, old], old.label) is old
    assert pick_set([new, old], "20260303-020000F") is None
    assert pick_set([], None) is None


def test_a_passing_drill_result_keeps_the_counts() -> None:
    """The task result names the set, its repository, the times, amcheck and the counts."""
    state = {
        "set_label": "20260301-020000F",
        "repository_id": "posix",
        "started_at": T0.isoformat(),
        "scratch_port": 54321,
    }
    check = {"amcheck_ok": True, "row_counts": {"public.items": 1000}}
    result = drill_result(state, check, (T0 + timedelta(minutes=2)).isoformat())
    assert result == {
        "status": "completed",
        "set_label": "20260301-020000F",
        "repository_id": "posix",
        "started_at": T0.isoformat(),
        "finished_at": (T0 + timedelta(minutes=2)).isoformat(),
        "amcheck_ok": True,
        "row_counts": {"public.items": 1000},
    }


def test_amcheck_findings_are_summed_up() -> None:
    """Nothing to say when pg_amcheck passed; else its first lines and how many more."""
    assert amcheck_problem(DrillCheck(amcheck_ok=True)) is None
    lines = [f'heap table "app.public.items", block {n}: corrupt' for n in range(8)]
    problem = amcheck_problem(DrillCheck(amcheck_ok=False, amcheck_output=["", *lines]))
    assert problem is not None
    assert problem.startswith('pg_amcheck found problems: heap table "app.public.items", block 0')
    assert problem.endswith("(and 3 more lines)")


def test_a_damaged_file_is_named_as_the_manifest_names_it() -> None:
    """A checksum mismatch while restoring names the set's file (pg_data/…) and says why."""
    assert damaged_file(CHECKSUM_ERROR, pg_data=PG_DATA) == (
        "pg_data/base/16385/16550",
        "its content does not match the checksum the backup recorded",
    )
    assert damaged_file(
        "error restoring '/elsewhere/global/pg_control': unable to decompress", pg_data=PG_DATA
    ) == ("/elsewhere/global/pg_control", "unable to decompress")
    assert damaged_file("ERROR: [075]: no backup set found to restore", pg_data=PG_DATA) is None


def test_a_restore_error_becomes_a_damaged_set() -> None:
    """The drill's error says which set is damaged and which file; other errors pass as they
    are."""
    subject = "drill of set 20260301-020000F of node n1 of shop"
    raised = ExternalCommandError(CHECKSUM_ERROR, exit_code=26)
    error = restore_error(raised, subject=subject, label="20260301-020000F", pg_data=PG_DATA)
    assert error.message == (
        f"{subject} failed: backup set 20260301-020000F is damaged: file "
        "pg_data/base/16385/16550 does not restore intact: its content does not match the "
        "checksum the backup recorded (pgbackrest exited 26)"
    )
    other = ExternalCommandError(f"{subject} failed: pgbackrest exited 75", exit_code=75)
    assert restore_error(other, subject=subject, label="x", pg_data=PG_DATA) is other


def test_a_drill_schedule_tick_starts_a_drill_of_the_newest_set() -> None:
    """A drill tick becomes a drill task with no set (the newest when it runs); a backup
    tick stays a node_backup annotated with its schedule."""
    drill = Due(ScheduleKey("shop", "n1", "weekly"), "drill", T0)
    assert _task_type(drill) == "drill"
    assert msgspec.convert(_request(drill), DrillInput) == DrillInput(
        schedule_id="weekly", tick_at="2026-03-01T02:00:00Z"
    )
    nightly = Due(ScheduleKey("shop", "n1", "nightly"), "incr", T0)
    assert _task_type(nightly) == "node_backup"
    backup = msgspec.convert(_request(nightly), BackupInput)
    assert (backup.type, backup.annotations) == ("incr", {"schedule": "nightly"})


def test_the_drill_workflow_cleans_up_after_itself() -> None:
    """Its steps are named once for all, and a failure or a cancel removes the scratch."""
    assert DRILL.step_names == [
        "write_config",
        "choose_set",
        "restore_scratch",
        "check_scratch",
        "remove_scratch",
    ]
    assert DRILL.on_failure is not None and DRILL.on_cancel is not None
    assert DRILL.input_type is DrillInput
