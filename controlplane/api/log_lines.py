"""Server log lines: every record starts a line of its own, and nothing a client sends (a path,
an id, a name inside an exception message) can start another one.

The formatter escapes control characters (CR, LF, NUL, ESC, U+2028, …) in a record's message, and
indents every line of a traceback, so a forged `2026-… ERROR …` can appear in the log only in the
middle of a line. `serve` installs it on the root logger, which uvicorn's and Litestar's records
reach too.
"""

from __future__ import annotations

import logging
import sys
import unicodedata
from typing import Any

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
        return printable(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _continuation(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _continuation(super().formatStack(stack_info))


def configure_logging(level: str) -> None:
    """Root logger to stderr through `OneLineFormatter`; uvicorn and Litestar add no handlers
    of their own (serve passes `log_config=None`, the app `logging_config=None`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Every request the control plane makes (Patroni's REST API, etcd) is not news.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    # Python's warnings too, instead of their own unformatted lines on stderr.
    logging.captureWarnings(True)
