"""Where a node's backup sets and recovery window sit on a time axis, as percentages of the
width of the bar the dashboard draws (pure: no I/O, `now` is passed in)."""

from __future__ import annotations

from datetime import datetime, timedelta

from msgspec import Struct

from controlplane.models import BackupCatalog

# The bar keeps a margin on each side so marks at either end stay visible.
_LEFT = 2.0
_WIDTH = 96.0
# A span shorter than this is drawn as this long (one backup a second ago is not a dot).
_SHORTEST = timedelta(minutes=1)
# The narrowest mark, so a set taken in a second is still drawn.
_MIN_MARK = 0.4


class Mark(Struct, kw_only=True):
    """A span on the bar: `x` and `width` in percent of the bar, `title` its words."""

    x: float
    width: float
    title: str
    kind: str = ""


class Timeline(Struct, kw_only=True):
    """The axis from `start` to `end`, the recovery window on it, one mark per backup set and
    where `now` is."""

    start: datetime
    end: datetime
    window: Mark | None
    backups: list[Mark]
    now: float


def _stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def catalog_timeline(catalog: BackupCatalog, now: datetime) -> Timeline | None:
    """The timeline of `catalog` up to `now`; None when it has neither backups nor a window."""
    window = catalog.recovery_window
    if not catalog.backups and window is None:
        return None
    times = [now]
    times += [t for b in catalog.backups for t in (b.started_at, b.stopped_at)]
    if window is not None:
        times += [window.earliest, window.latest]
    start = min(times)
    end = max(max(times), start + _SHORTEST)
    span = (end - start).total_seconds()

    def at(value: datetime) -> float:
        return round(_LEFT + _WIDTH * (value - start).total_seconds() / span, 3)

    def mark(first: datetime, last: datetime, title: str, kind: str) -> Mark:
        x = min(at(first), _LEFT + _WIDTH - _MIN_MARK)
        return Mark(x=x, width=max(at(last) - x, _MIN_MARK), title=title, kind=kind)

    drawn = None
    if window is not None:
        title = f"recovery window: {_stamp(window.earliest)} to {_stamp(window.latest)}"
        drawn = mark(window.earliest, window.latest, title, "window")
    sets = [
        mark(b.started_at, b.stopped_at, f"{b.type} backup {b.label}", b.type)
        for b in catalog.backups
    ]
    return Timeline(start=start, end=end, window=drawn, backups=sets, now=at(now))
