"""Server log lines: every record starts a line of its own, and nothing a client sends (a path,
an id, a name inside an exception message) can start another one.

Two formats (`serve --log-format`, CONTROLPLANE_LOG_FORMAT):
- `text`: the formatter escapes control characters (CR, LF, NUL, ESC, U+2028, …) in a record's
  message, and indents every line of a traceback, so a forged `2026-… ERROR …` can appear in the
  log only in the middle of a line;
- `json`: one JSON object per line (`timestamp`, `level`, `logger`, `message`, the `task_id`,
  `database_id` and `node` of the task it comes from, and the record's structured fields), for
  log shippers; JSON escapes every control character itself.

`serve` installs it on the root logger, which uvicorn's and Litestar's records reach too.
"""

from __future__ import annotations

import logging
import sys
import unicodedata
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from controlplane.tasks.log_context import task_fields

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Continuation lines (tracebacks, stack dumps) start with this, never with a record's text.
CONTINUATION = "    | "
# Besides the C0/C1 controls: characters some readers (Python's splitlines, editors, browsers)
# break lines at.
_LINE_BREAKS = {0x2028, 0x2029}


def _escape_table() -> dict[int, str]:
    table = {}
    for code in (*range(0x00, 0x20), *range(0x7F, 0xA0), *_LINE_BREAKS):
        if code == 0x09:  # a tab cannot end a line
            continue
        char = chr(code)
        table[code] = repr(char)[1:-1] if unicodedata.category(char) == "Cc" else f"\\u{code:04x}"
    return table


_ESCAPES = _escape_table()


def printable(text: str) -> str:
    """`text` with every control or line-breaking character written as an escape (`\\n`)."""
    return text.translate(_ESCAPES)


def _continuation(text: str) -> str:
    return "\n".join(CONTINUATION + printable(line) for line in text.split("\n"))


class OneLineFormatter(logging.Formatter):
    """A formatter whose records cannot be forged by what they quote."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = record_fields(record)
        context = " ".join(f"{key}={fields[key]}" for key in _CONTEXT_KEYS if key in fields)
        return printable(f"{text} [{context}]" if context else text)

    def formatException(self, ei: Any) -> str:
        return _continuation(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _continuation(super().formatStack(stack_info))


LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
# Structured fields a record carries (`logger.info(..., extra={"fields": {...}})`).
FIELDS_ATTRIBUTE = "fields"
# The task a text line comes from, appended to it.
_CONTEXT_KEYS = ("task_id", "database_id", "node")
# Keys every JSON line has; a record's own fields never replace them.
_BASE_KEYS = frozenset({"timestamp", "level", "logger", "message"})


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The task the record comes from (context variables, or the record's own fields), then the
    record's structured fields."""
    fields = task_fields()
    extra = getattr(record, FIELDS_ATTRIBUTE, None)
    if isinstance(extra, dict):
        fields.update({str(k): v for k, v in extra.items() if str(k) not in _BASE_KEYS})
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **record_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return msgspec.json.encode(line, enc_hook=str).decode()


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Root logger to stderr through `OneLineFormatter` or `JsonFormatter`; uvicorn and Litestar
    add no handlers of their own (serve passes `log_config=None`, the app
    `logging_config=None`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else OneLineFormatter(FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Every request the control plane makes (Patroni's REST API, etcd) is not news.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    # Python's warnings too, instead of their own unformatted lines on stderr.
    logging.captureWarnings(True)
