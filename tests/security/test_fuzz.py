"""A bounded, seeded fuzzer over every route of the OpenAPI document, with read, write and admin
tokens: thousands of random requests, no 5xx, and the server is still healthy afterwards."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import Any

from tests.security.conftest import TARGET_ID, Target
from tests.security.fuzz import Fuzzer
from tests.security.hostile import assert_log_clean
from tests.security.routes import fetch_routes, send

# Reproduce a failure with CONTROLPLANE_FUZZ_SEED=<the seed it printed>.
SEED = int(os.environ.get("CONTROLPLANE_FUZZ_SEED", "20261130"))
MAX_REQUESTS = 3000
MAX_SECONDS = 60.0
CONCURRENCY = 4


async def test_fuzzed_requests_never_get_a_5xx(target: Target, target_db: dict[str, Any]) -> None:
    """Up to 3000 requests or 60 s, whichever ends first, four at a time: every answer is below
    500 and every error is in our shape; afterwards /health answers and the log is clean."""
    async with target.client("admin") as api:
        routes = await fetch_routes(api)
        [task] = (await api.get(f"/v1/databases/{TARGET_ID}/tasks")).json()["tasks"]
    real = {"database_id": TARGET_ID, "node": "n1", "task_id": task["task_id"]}
    fuzzer = Fuzzer(SEED, routes, real)
    print(f"fuzzing with seed {SEED}")
    statuses: collections.Counter[int] = collections.Counter()
    deadline = time.monotonic() + MAX_SECONDS
    next_index = iter(range(MAX_REQUESTS))

    async def worker() -> None:
        async with target.client(None, timeout=120) as api:
            for index in next_index:
                if time.monotonic() > deadline:
                    return
                request = fuzzer.request(index)
                headers = {**target.headers(request.scope), **request.headers}
                try:
                    answer = await send(
                        api,
                        request.method,
                        request.path,
                        content=request.content,
                        headers=headers,
                    )
                except AssertionError as exc:
                    raise AssertionError(f"request {index} (seed {SEED}): {exc}") from None
                statuses[answer.status_code] += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    total = sum(statuses.values())
    print(f"{total} requests, statuses {dict(sorted(statuses.items()))}")
    assert total >= 500, statuses
    assert all(status < 500 for status in statuses), statuses
    # Enough got past auth and validation to reach the handlers, not only 4xx walls.
    assert statuses[200] > 0 and statuses[404] > 0 and statuses[422] > 0, statuses
    async with target.client(None) as api:
        assert (await api.get("/health")).json() == {"status": "ok"}
    async with target.client("read") as api:
        databases = (await api.get("/v1/databases")).json()["databases"]
    assert [d["id"] for d in databases] == [TARGET_ID]
    assert_log_clean(target)
