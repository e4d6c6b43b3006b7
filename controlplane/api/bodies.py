"""Request bodies: bounded in size and nesting before msgspec sees them, validated off the loop.

Every route that takes a JSON body reads it through `read_body`:

1. Litestar reads at most `Settings.max_body_bytes` (413 `request_too_large` beyond, announced
   or streamed);
2. in a worker thread, a non-recursive scan of the bytes rejects nesting deeper than
   `MAX_JSON_DEPTH` and NUL characters (PostgreSQL can store neither in text nor in jsonb), then
   the route's own parser runs, so a body that is slow to reject (hundreds of thousands of bad
   items in 1 MiB) costs a thread, not the event loop that serves `/health` and renews task
   leases. At most `BODY_CHECKS_AT_ONCE` bodies are checked at a time; others wait their turn.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from litestar import Request
from litestar.exceptions import InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from controlplane.errors import MalformedRequestError

# The deepest legitimate body (a repository's custom_options in a node's backup_config: body,
# spec, nodes, node, backup_config, repositories, repository, custom_options) nests 8 levels;
# 64 leaves room for any future shape and stays far below the recursion limit (about 1000
# frames) that the parser and the validators walk with.
MAX_JSON_DEPTH = 64
# Body checks that may run at once; the rest queue without holding a thread. Validation is
# pure Python: under the GIL a second checker adds no throughput, only more contention with the
# event loop for the interpreter.
BODY_CHECKS_AT_ONCE = 1
# The scan works through the body in slices so that no single C call holds the GIL for long.
_SLICE = 64 * 1024
# `[`/`{` count +1 and `]`/`}` -1 (as signed bytes); everything else is dropped.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))

Parser = Callable[[bytes], object]


def nesting_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep arrays and objects nest in `body` (JSON bytes), counted without recursion;
    the scan stops early once the depth exceeds `limit` and returns what it found so far.

    Brackets inside strings do not count. Escapes are removed first (`\\\\`, then `\\"`), so every
    quote left opens or closes a string. Bytes that are not JSON at all give some number; the
    parser rejects them anyway.
    """
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    depth = deepest = 0
    in_string = False
    for start in range(0, len(text), _SLICE):
        parts = text[start : start + _SLICE].split(b'"')
        outside = b"".join(parts[1 if in_string else 0 :: 2])
        in_string ^= (len(parts) - 1) % 2 == 1
        steps = outside.translate(_STEPS, _NOT_BRACKETS)
        if steps:
            levels = itertools.accumulate(memoryview(steps).cast("b"), initial=depth)
            deepest = max(deepest, max(levels))
            depth += steps.count(1) - steps.count(255)
        if deepest > limit:
            break
    return deepest


def has_nul_escape(body: bytes) -> bool:
    """True when a JSON string in `body` holds a NUL (`\\u0000`; a raw NUL is not JSON)."""
    return b"\\u0000" in body.replace(b"\\\\", b"")


def check_body(body: bytes, parse: Parser | None) -> None:
    """Reject too deep nesting and NUL characters, then run `parse` (which raises the domain
    error of an invalid body). Runs in a worker thread."""
    depth = nesting_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise MalformedRequestError(
            f"request body nests deeper than {MAX_JSON_DEPTH} levels",
            details={"max_depth": MAX_JSON_DEPTH},
        )
    if has_nul_escape(body):
        raise MalformedRequestError("request body holds a NUL character (\\u0000) in a string")
    if parse is None:
        return
    try:
        parse(body)
    except RecursionError:
        # Backstop: the scan above should have refused anything this deep.
        raise MalformedRequestError(
            f"request body nests deeper than {MAX_JSON_DEPTH} levels",
            details={"max_depth": MAX_JSON_DEPTH},
        ) from None


async def read_body(request: Request[Any, Any, Any], parse: Parser | None = None) -> bytes:
    """The request body, once it is known to be within bounds and (with `parse`) valid.

    The operation the route then calls parses it again; that second parse only ever sees a
    body that passed, whose size the models bound.
    """
    try:
        body = await request.body()
    except RequestEntityTooLarge:
        limit = request.route_handler.resolve_request_max_body_size()
        raise RequestEntityTooLarge(
            detail=f"request body is larger than {limit} bytes", extra={"max_body_bytes": limit}
        ) from None
    except InternalServerException:
        # Litestar's way of saying the client went away before sending the whole body.
        raise MalformedRequestError(
            "the client disconnected before sending the whole body"
        ) from None
    checks: asyncio.Semaphore = request.app.state.body_checks
    async with checks:
        await asyncio.to_thread(check_body, body, parse)
    return body
