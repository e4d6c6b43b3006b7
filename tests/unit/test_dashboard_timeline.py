"""The dashboard's backup timeline: where sets and the recovery window fall on the bar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controlplane.dashboard.timeline import catalog_timeline
from controlplane.models import BackupCatalog, BackupSet, RecoveryWindow

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _set(label: str, kind: str, start: timedelta, took: timedelta) -> BackupSet:
    return BackupSet(
        label=label,
        type=kind,  # type: ignore[arg-type]
        repository_id="posix",
        started_at=T0 + start,
        stopped_at=T0 + start + took,
    )


def test_an_empty_catalog_has_no_timeline() -> None:
    """Nothing to draw: no backups and no window."""
    assert catalog_timeline(BackupCatalog(backups=[]), T0) is None


def test_sets_and_window_are_placed_in_proportion_to_time() -> None:
    """The axis runs from the first set's start to now; a set and the window sit where their
    times fall on it, in percent of the bar inside its 2% margins."""
    full = _set("20260301-120000F", "full", timedelta(0), timedelta(minutes=10))
    incr = _set("20260301-120000F_20260301-130000I", "incr", timedelta(hours=1), timedelta(0))
    window = RecoveryWindow(earliest=full.stopped_at, latest=T0 + timedelta(hours=1, minutes=30))
    catalog = BackupCatalog(backups=[full, incr], recovery_window=window)
    line = catalog_timeline(catalog, now=T0 + timedelta(hours=2))
    assert line is not None
    assert (line.start, line.end) == (T0, T0 + timedelta(hours=2))
    first, second = line.backups
    assert (first.x, first.kind) == (2.0, "full")
    assert first.width == 8.0  # ten minutes of two hours of 96%
    assert second.x == 50.0 and second.width == 0.4  # an instant is still drawn
    assert second.title == "incr backup 20260301-120000F_20260301-130000I"
    assert line.window is not None
    assert line.window.x == 10.0 and line.window.width == 64.0
    assert line.window.title.startswith("recovery window: 2026-03-01 12:10:00 UTC to ")
    assert line.now == 98.0


def test_a_span_shorter_than_a_minute_is_drawn_a_minute_long() -> None:
    """A set taken a second ago does not fill the whole bar."""
    full = _set("20260301-120000F", "full", timedelta(0), timedelta(seconds=1))
    line = catalog_timeline(BackupCatalog(backups=[full]), now=T0 + timedelta(seconds=2))
    assert line is not None
    assert line.end == T0 + timedelta(minutes=1)
    assert line.backups[0].width == 1.6 and line.now == 5.2  # one and two seconds of sixty
    assert line.window is None
