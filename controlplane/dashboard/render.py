"""HTML for the dashboard: a Jinja2 environment over the package's templates (autoescaped),
the filters that put times, sizes and log fields into words, and the page response."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2
import msgspec
from litestar import Response

from controlplane import __version__
from controlplane.pgbackrest.info import TASK_ANNOTATION

# The page loads only what this server serves: its stylesheet and its script, and the log
# stream from the API. Nothing inline can run even if something slipped past the escaping.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def when(value: datetime | None) -> str:
    """A moment in UTC to the second, or a dash."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(value: datetime) -> str:
    """The time of day in UTC, as a log line shows it."""
    return value.astimezone(UTC).strftime("%H:%M:%S")


def size(value: int | None) -> str:
    """Bytes in binary units: 1536 -> 1.5 KiB."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in _UNITS:
        if abs(amount) < 1024 or unit == _UNITS[-1]:
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def duration(start: datetime | None, stop: datetime | None) -> str:
    """How long from `start` to `stop`: 75 s -> 1m 15s."""
    if start is None or stop is None:
        return "-"
    seconds = max(int((stop - start).total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


def fields(value: dict[str, Any], hide: str = "") -> str:
    """A log entry's fields (or a set's annotations but `hide`) as `key=value` words, the same
    text the page's script writes."""
    words = (
        f"{key}={item if isinstance(item, str) else msgspec.json.encode(item).decode()}"
        for key, item in value.items()
        if key != hide
    )
    return " ".join(words)


def page_environment() -> jinja2.Environment:
    """The templates shipped in this package, every value escaped."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("controlplane.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(when=when, clock=clock, size=size, fields=fields)
    environment.globals.update(
        duration=duration, version=__version__, task_annotation=TASK_ANNOTATION
    )
    return environment


def html(
    environment: jinja2.Environment,
    template: str,
    *,
    status: int = 200,
    **context: Any,
) -> Response[str]:
    """`template` rendered with `context`, as a page no other origin may frame or script."""
    text = environment.get_template(template).render(**context)
    return Response(text, status_code=status, media_type="text/html", headers=_HEADERS)
