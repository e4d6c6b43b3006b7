"""The access log: one record per HTTP request (method, path, status, duration, remote address)
on the `controlplane.access` logger.

Nothing a request carries besides its method and path reaches it: no header (so no token), no
query string (whatever a client puts there, a secret included), no body. The path is bounded in
length; the formatters escape what it contains (`api/log_lines.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from controlplane.api.log_lines import FIELDS_ATTRIBUTE

log = logging.getLogger("controlplane.access")
# Plain ASGI (lifespan scopes pass through too).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]
# Longer paths are cut: no route of ours is near this long.
_PATH_SHOWN = 256


class AccessLog:
    """ASGI middleware around the whole app (unknown routes and auth failures included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.monotonic()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _record(scope, status, time.monotonic() - began)


def _record(scope: Scope, status: int, seconds: float) -> None:
    """Log one request; status 0 means the client went away before an answer started."""
    client: Any = scope.get("client")
    remote = f"{client[0]}:{client[1]}" if client else "-"
    method = str(scope.get("method", "-"))
    path = str(scope.get("path", ""))[:_PATH_SHOWN]
    duration_ms = round(seconds * 1000, 1)
    fields = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "remote": remote,
    }
    log.info(
        "%s %s %d %.1fms %s",
        method,
        path,
        status,
        duration_ms,
        remote,
        extra={FIELDS_ATTRIBUTE: fields},
    )
