"""The read cache's rules, around a stand-in change feed (the feed itself is tested against a
real store in tests/integration/test_read_cache.py)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from controlplane.api.read_cache import ReadCache
from controlplane.errors import NotFoundError
from controlplane.server.instance_facts import InstanceFactsBook
from controlplane.store.changes import ChangeFeed


class Feed:
    def __init__(self) -> None:
        self.up = True
        self.counter = 0

    async def sync(self) -> bool:
        await asyncio.sleep(0)
        return self.up

    def version(self, topic: str) -> tuple[int, int]:
        return 1, self.counter


def _cache(feed: Feed, facts: InstanceFactsBook | None = None) -> ReadCache:
    return ReadCache(cast(ChangeFeed, feed), facts or InstanceFactsBook(), max_entries=2)


class Builder:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> bytes:
        self.calls += 1
        await asyncio.sleep(0.01)
        return f"answer {self.calls}".encode()


async def test_kept_until_its_topic_changes() -> None:
    feed, build = Feed(), Builder()
    cache = _cache(feed)
    assert await cache.answer("k", "tasks", build) == b"answer 1"
    assert await cache.answer("k", "tasks", build) == b"answer 1"
    feed.counter += 1
    assert await cache.answer("k", "tasks", build) == b"answer 2"
    assert build.calls == 2


async def test_facts_void_only_answers_that_show_them() -> None:
    feed, facts = Feed(), InstanceFactsBook()
    cache = _cache(feed, facts)
    with_facts, without = Builder(), Builder()
    await cache.answer("a", "databases", with_facts, with_facts=True)
    await cache.answer("b", "databases", without)
    facts.version += 1
    await cache.answer("a", "databases", with_facts, with_facts=True)
    await cache.answer("b", "databases", without)
    assert (with_facts.calls, without.calls) == (2, 1)


async def test_concurrent_misses_build_once() -> None:
    feed, build = Feed(), Builder()
    cache = _cache(feed)
    answers = await asyncio.gather(*(cache.answer("k", "tasks", build) for _ in range(10)))
    assert answers == [b"answer 1"] * 10
    assert build.calls == 1


async def test_errors_are_never_kept() -> None:
    feed = Feed()
    cache = _cache(feed)
    calls = 0

    async def missing() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise NotFoundError("database x not found")

    results = await asyncio.gather(
        *(cache.answer("k", "tasks", missing) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, NotFoundError) for r in results)
    with pytest.raises(NotFoundError):
        await cache.answer("k", "tasks", missing)
    assert calls == 2  # one for the three concurrent reads, one for the read after


async def test_a_cancelled_build_is_rebuilt_by_its_waiters() -> None:
    feed = Feed()
    started, never = asyncio.Event(), asyncio.Event()
    calls = 0

    async def build() -> bytes:
        # The first build hangs until it is cancelled (no timing: a busy machine cannot let
        # it finish first); the rebuild answers at once.
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            await never.wait()
        return f"answer {calls}".encode()

    cache = _cache(feed)
    first = asyncio.create_task(cache.answer("k", "tasks", build))
    await started.wait()
    second = asyncio.create_task(cache.answer("k", "tasks", build))
    for _ in range(5):  # the second read now waits on the first one's build
        await asyncio.sleep(0)
    first.cancel()
    assert await second == b"answer 2"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_feed_down_reads_the_store_every_time() -> None:
    feed, build = Feed(), Builder()
    feed.up = False
    cache = _cache(feed)
    for _ in range(3):
        await cache.answer("k", "tasks", build)
    assert build.calls == 3


async def test_least_recently_used_answers_go_first() -> None:
    feed = Feed()
    cache = _cache(feed)
    builds = {key: Builder() for key in "abc"}
    for key in "abab":
        await cache.answer(key, "tasks", builds[key])
    await cache.answer("c", "tasks", builds["c"])  # over two: "a" goes
    await cache.answer("b", "tasks", builds["b"])
    await cache.answer("a", "tasks", builds["a"])
    assert [builds[k].calls for k in "abc"] == [2, 1, 1]
