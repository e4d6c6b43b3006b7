"""The dashboard's pages as HTML: every value escaped, times, sizes and log fields in words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controlplane.dashboard.render import duration, fields, page_environment, size, when
from controlplane.dashboard.timeline import catalog_timeline
from controlplane.dashboard.views import NodeBackups, NodeView
from controlplane.models import (
    BackupCatalog,
    BackupSet,
    ConnectionInfo,
    Database,
    Instance,
    LogEntry,
    RecoveryWindow,
    Task,
    TaskStep,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>'


def test_filters_put_values_in_words() -> None:
    """Sizes in binary units, durations, UTC times and log fields as key=value."""
    assert [size(0), size(1536), size(5 * 1024**3), size(None)] == [
        "0 B",
        "1.5 KiB",
        "5.0 GiB",
        "-",
    ]
    assert duration(T0, T0 + timedelta(seconds=75)) == "1m 15s"
    assert duration(T0, T0 + timedelta(hours=2, minutes=3)) == "2h 3m"
    assert duration(T0, None) == "-"
    assert when(T0) == "2026-03-01 12:00:00 UTC"
    assert fields({"label": "x", "size": 10, "ok": True}) == "label=x size=10 ok=true"


def test_database_page_escapes_everything_and_draws_the_window() -> None:
    """A value holding markup is shown as text, and the catalog's window is an SVG bar."""
    instance = Instance(
        id="shop-n1",
        node_name="n1",
        host_id="local",
        state="failed",
        role="primary",
        port=5432,
        connection_info=ConnectionInfo(host="127.0.0.1", port=5432, database="app"),
        error=HOSTILE,
    )
    database = Database(
        id="shop",
        state="degraded",
        created_at=T0,
        updated_at=T0,
        spec={"database_name": HOSTILE, "postgres_version": "15", "nodes": [{"name": "n1"}]},
        instances=[instance],
    )
    full = BackupSet(
        label="20260301-120000F",
        type="full",
        repository_id="posix",
        started_at=T0,
        stopped_at=T0 + timedelta(minutes=1),
        annotations={"reason": HOSTILE, "controlplane_task_id": "0190f2a4"},
    )
    catalog = BackupCatalog(
        backups=[full],
        recovery_window=RecoveryWindow(earliest=full.stopped_at, latest=T0 + timedelta(hours=1)),
        repositories=["posix"],
    )
    page = (
        page_environment()
        .get_template("database.html.j2")
        .render(
            database=database,
            nodes=[NodeView(name="n1", instances=[instance])],
            catalogs=[
                NodeBackups(
                    node="n1",
                    catalog=catalog,
                    timeline=catalog_timeline(catalog, T0 + timedelta(hours=1)),
                )
            ],
            tasks=[],
        )
    )
    assert "<script>alert" not in page
    assert page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") == 3
    assert '<rect class="window" x="3.6%" y="20" width="94.4%"' in page
    assert "2026-03-01 12:01:00 UTC → 2026-03-01 13:00:00 UTC" in page
    assert 'class="badge state-degraded"' in page
    assert "controlplane_task_id" not in page  # the set's task is its own column


def test_task_page_renders_the_log_so_far_and_where_to_follow_it() -> None:
    """The log starts server-rendered; the script resumes after the last entry shown."""
    task = Task(
        task_id="0190f2a4-0000-7000-8000-000000000001",
        parent_id=None,
        scope="database",
        entity_id="shop",
        database_id="shop",
        node_name="n1",
        type="node_backup",
        status="running",
        trigger="manual",
        actor="admin",
        created_at=T0,
        steps=[TaskStep(name="take_backup", status="running", started_at=T0)],
    )
    entry = LogEntry(entry_id=7, timestamp=T0, level="info", message=HOSTILE, fields={"n": 1})
    page = (
        page_environment()
        .get_template("task.html.j2")
        .render(task=task, entries=[entry], after=7, follow=True)
    )
    assert 'data-stream="/v1/databases/shop/tasks/0190f2a4-0000-7000-8000-000000000001/log"' in page
    assert 'data-after="7" data-follow="true"' in page
    assert '<span class="message">&lt;script&gt;' in page and "n=1" in page
    assert 'data-step="take_backup"' in page
