"""The status screen from API answers: instances with lag and archiving, subscriptions, each
node's last backup (its own increment size) and window, tasks at their current step."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import msgspec
from rich.console import Console

from controlplane.cli.output import backups_table
from controlplane.cli.status_render import render_report
from controlplane.cli.status_report import StatusReport, archiver_status, database_status
from controlplane.models import (
    Archiver,
    BackupCatalog,
    BackupSet,
    Database,
    RecoveryWindow,
    Task,
)

NOW = datetime(2025, 5, 5, 12, 0, 0, tzinfo=UTC)


def _database() -> Database:
    def instance(node: str, id_: str, role: str, **more: object) -> dict[str, object]:
        return {
            "id": id_, "node_name": node, "host_id": "h1", "state": "available", "role": role,
            "port": 5432, "connection_info": {"host": "127.0.0.1", "port": 5432, "database": "app"},
            "timeline": 2, **more,
        }  # fmt: skip

    return msgspec.convert(
        {
            "id": "shop",
            "state": "backing_up",
            "created_at": NOW,
            "updated_at": NOW,
            "spec": {
                "database_name": "app",
                "backup_config": {"repositories": [{"type": "posix", "base_path": "/b"}]},
                "nodes": [{"name": "n1"}, {"name": "n2"}],
            },
            "instances": [
                instance(
                    "n2",
                    "shop-n2",
                    "primary",
                    subscriptions=[
                        {
                            "provider_node": "n1",
                            "name": "s12",
                            "status": "down",
                            "lag_bytes": 3 * 1024 * 1024,
                        }
                    ],
                ),
                instance("n1", "shop-n1-b", "replica", lag_bytes=2048, lag_seconds=1.5),
                instance(
                    "n1",
                    "shop-n1-a",
                    "primary",
                    archiver={
                        "archived_count": 9,
                        "failed_count": 3,
                        "last_archived_at": NOW - timedelta(minutes=5),
                        "last_failed_at": NOW - timedelta(minutes=1),
                        "last_failed_wal": "000000020000000000000009",
                        "ready_files": 4,
                    },
                ),
            ],
        },
        Database,
    )


def _catalog() -> BackupCatalog:
    def backup_set(label: str, type_: str, minutes: int, delta: int) -> BackupSet:
        stop = NOW - timedelta(minutes=minutes)
        return BackupSet(
            label=label, type=type_, repository_id="r1", started_at=stop - timedelta(seconds=30),
            stopped_at=stop, size=100 * 1024**2, repository_size=40 * 1024**2, delta=delta,
            repository_delta=delta // 2,
        )  # fmt: skip

    return BackupCatalog(
        backups=[
            backup_set("20250505-100000F", "full", 120, 100 * 1024**2),
            backup_set("20250505-100000F_20250505-110000I", "incr", 60, 5 * 1024**2),
        ],
        recovery_window=RecoveryWindow(earliest=NOW - timedelta(hours=2), latest=NOW),
    )


def _task() -> Task:
    return msgspec.convert(
        {
            "task_id": "019a3c5e-8f1b-7a00-8000-000000000001",
            "parent_id": None,
            "scope": "database",
            "entity_id": "shop",
            "database_id": "shop",
            "node_name": "n1",
            "type": "node_backup",
            "status": "running",
            "trigger": "manual",
            "actor": "admin",
            "created_at": NOW,
            "started_at": NOW - timedelta(seconds=42),
            "steps": [
                {"name": "resolve_primary", "status": "completed"},
                {"name": "take_backup", "status": "running"},
                {"name": "record_result", "status": "pending"},
            ],
        },
        Task,
    )


def test_database_status_gathers_every_fact_of_the_screen() -> None:
    """Instances ordered by node with primaries first; the replica's lag; archiving failing
    when the newest attempt failed; subscriptions of primaries; the newest set as the last
    backup with its own increment; a node without a catalog; the running step."""
    status = database_status(_database(), {"n1": _catalog(), "n2": "repository unreadable"},
                             [_task()], NOW)  # fmt: skip
    assert [(i.id, i.role) for i in status.instances] == [
        ("shop-n1-a", "primary"),
        ("shop-n1-b", "replica"),
        ("shop-n2", "primary"),
    ]
    primary = status.instances[0]
    assert primary.archiver is not None
    assert (primary.archiver.state, primary.archiver.failed_count) == ("failing", 3)
    assert primary.archiver.last_archived_age_seconds == 300
    assert [(s.node_name, s.provider_node, s.lag_bytes) for s in status.subscriptions] == [
        ("n2", "n1", 3 * 1024 * 1024)
    ]
    n1, n2 = status.backups
    assert n1.last is not None
    assert (n1.last.type, n1.last.size, n1.last.database_size) == (
        "incr",
        5 * 1024**2,
        100 * 1024**2,
    )
    assert (n1.sets, n1.last.age_seconds) == (2, 3600)
    assert n2.error == "repository unreadable"
    [task] = status.tasks
    assert (task.step, task.step_number, task.steps_total, task.running_seconds) == (
        "take_backup", 2, 3, 42
    )  # fmt: skip


def test_archiver_states() -> None:
    """ok after a success, backlog with many .ready files, failing when the newest attempt
    failed."""
    ok = Archiver(archived_count=1, failed_count=1, last_archived_at=NOW,
                  last_failed_at=NOW - timedelta(hours=1), ready_files=0)  # fmt: skip
    assert archiver_status(ok, NOW).state == "ok"  # type: ignore[union-attr]
    backlog = msgspec.structs.replace(ok, ready_files=20)
    assert archiver_status(backlog, NOW).state == "backlog"  # type: ignore[union-attr]
    never = Archiver(archived_count=0, failed_count=2, last_failed_at=NOW)
    assert archiver_status(never, NOW).state == "failing"  # type: ignore[union-attr]
    assert archiver_status(None, NOW) is None


def test_screen_shows_each_section_in_plain_text() -> None:
    """Off a terminal the screen is plain aligned text with every section's facts."""
    status = database_status(_database(), {"n1": _catalog()}, [_task()], NOW)
    out = io.StringIO()
    Console(file=out, width=300, color_system=None).print(
        render_report(StatusReport(observed_at=NOW, databases=[status]))
    )
    text = out.getvalue()
    assert "\x1b[" not in text
    assert "shop  backing_up  database app" in text
    assert "2.0 KiB / 1.5s" in text  # the replica's lag
    assert "failing" in text and "(last 000000020000000000000009)" in text
    assert "5m00s ago" in text  # last archived WAL
    assert "s12" in text and "3.0 MiB" in text
    assert "20250505-100000F_20250505-110000I  incr  1h00m ago  5.0 MiB  2" in text
    assert "take_backup (2/3)" in text
    assert "none yet" in text  # n2: configured, no catalog answer given


def test_backup_list_shows_each_sets_own_increment() -> None:
    """An incr set shows what it copied (pgBackRest's delta), next to the database size."""
    lines = backups_table(_catalog()).splitlines()
    assert lines[0].split() == [
        "LABEL", "TYPE", "REPO", "STARTED", "STOPPED", "TOOK", "DATABASE", "BACKUP", "STORED",
        "TASK",
    ]  # fmt: skip
    incr = lines[2]
    assert incr.split()[8:14] == ["100.0", "MiB", "5.0", "MiB", "2.5", "MiB"]
    assert lines[1].split()[8:14] == ["100.0", "MiB", "100.0", "MiB", "50.0", "MiB"]
