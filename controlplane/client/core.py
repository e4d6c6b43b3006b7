"""What the API clients share: response decoding, the SSE parser and follower, configuration.

`controlplane.client` (blocking) and `controlplane.client.aio` build on this; import the
public names from `controlplane.client`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

from controlplane import __version__
from controlplane.client.errors import ApiError, ApiUnreachable
from controlplane.models import LogEnd, LogEntry

__all__ = [
    "ClientBase",
    "LogFollower",
    "SseEvent",
    "SseParser",
    "decode",
    "resolve_token",
    "resolve_url",
    "tls_verify",
]

DEFAULT_URL = "http://127.0.0.1:3000"
T = TypeVar("T")
Body = Mapping[str, Any] | msgspec.Struct | bytes
# A followed log may be silent for as long as a pgBackRest command runs: no read timeout.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=None)


class SseEvent(msgspec.Struct, kw_only=True):
    event: str = "message"
    data: str = ""
    id: str | None = None


class SseParser:
    """Incremental `text/event-stream` parser fed one line at a time (the WHATWG rules)."""

    def __init__(self) -> None:
        self.last_event_id = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        """Take one line (without its line break); return the event a blank line completes."""
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SseEvent(
                event=self._event or "message",
                data="\n".join(self._data),
                id=self.last_event_id or None,
            )
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        return None


class LogFollower:
    """Turns the events of a followed task log into entries and the end marker.

    It remembers the last entry delivered, so a reconnect resumes after it (`Last-Event-ID`)
    and an entry is never delivered twice.
    """

    def __init__(self, after_entry_id: int = 0) -> None:
        self.after = after_entry_id
        self.end: LogEnd | None = None
        self._parser = SseParser()

    def request(self) -> tuple[dict[str, str], dict[str, str]]:
        """Query parameters and headers of the next (re)connection."""
        headers = {"Accept": "text/event-stream"}
        if self.after:
            headers["Last-Event-ID"] = str(self.after)
        return {"after_entry_id": str(self.after)}, headers

    def reconnecting(self) -> None:
        """Forget a partly received event: the new stream sends it again."""
        self._parser = SseParser()

    def feed(self, line: str) -> LogEntry | LogEnd | None:
        event = self._parser.feed(line)
        if event is None:
            return None
        if event.event == "entry":
            entry = decode(event.data.encode(), LogEntry)
            if entry.entry_id <= self.after:
                return None
            self.after = entry.entry_id
            return entry
        if event.event == "end":
            self.end = decode(event.data.encode(), LogEnd)
            return self.end
        return None


def resolve_url(url: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The API URL: the argument, else `CONTROLPLANE_URL`, else http://127.0.0.1:3000."""
    env = os.environ if env is None else env
    return (url or env.get("CONTROLPLANE_URL") or DEFAULT_URL).rstrip("/")


def resolve_token(
    token: str | None = None,
    *,
    data_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str | None:
    """The token: the argument, else `CONTROLPLANE_TOKEN`, else `<data dir>/admin-token`."""
    env = os.environ if env is None else env
    if token:
        return token
    if env.get("CONTROLPLANE_TOKEN"):
        return env["CONTROLPLANE_TOKEN"]
    base = Path(data_dir or env.get("CONTROLPLANE_DATA_DIR") or ".controlplane")
    try:
        text = (base / "admin-token").read_text().strip()
    except OSError:
        return None
    return text or None


def tls_verify(url: str, verify: ssl.SSLContext | bool) -> ssl.SSLContext | bool:
    """What to verify TLS with. A plain-http client never speaks TLS: instead of loading the
    system's CA bundle (tens of milliseconds, at every start of the CLI) it gets a context that
    trusts nothing, so it still could not talk TLS unverified."""
    if verify is True and url.startswith("http://"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return verify


def decode(content: bytes, type_: type[T]) -> T:
    """Decode a response body; one of another shape is an `invalid_response` ApiError."""
    try:
        return msgspec.json.decode(content, type=type_)
    except msgspec.DecodeError as exc:
        raise ApiError(
            f"unexpected response from the server: {exc}", name="invalid_response"
        ) from None


class ClientBase:
    """What both clients hold: URL, token and the reconnect policy of followed logs."""

    def __init__(
        self,
        url: str | None,
        token: str | None,
        data_dir: str | Path | None,
        *,
        reconnect_delay: float,
        max_reconnects: int,
    ) -> None:
        self.url = resolve_url(url)
        self.token = resolve_token(token, data_dir=data_dir)
        self.reconnect_delay = reconnect_delay
        self.max_reconnects = max_reconnects

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"controlplane-client/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _stream_failed(self, failures: int, exc: Exception | None) -> float:
        """Count a broken follow stream; the delay before reconnecting, or raise when spent."""
        if failures > self.max_reconnects:
            reason = exc or "the stream ended before the task did"
            raise ApiUnreachable(
                f"lost the log stream from {self.url}: {reason}", name="unreachable"
            )
        return self.reconnect_delay * failures
