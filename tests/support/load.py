"""Load harness for the scenarios: a writer on every node while an operation runs, then the
checks that follow it (every node converges to one count and md5, no committed row is missing).

A writer commits one small transaction at a time on its own connection, with ids that never
collide across writers (`writer index * ID_SPAN + sequence`). It records which ids were
committed (COMMIT returned) and which are unknown (the statement raised: the node went away
mid-commit, so the row may or may not exist), rides out its node stopping and restarting
(reconnecting with a small backoff), can be paused, and stops by itself after `max_duration`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tests.support.api import connect
from tests.support.data import TABLE, nodes_of
from tests.support.eventually import eventually

ID_SPAN = 10_000_000
INSERT = "INSERT INTO items SELECT g, md5(g::text) FROM unnest($1::int[]) g"
USER_TABLES = (
    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
    " WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'pglogical')"
    " ORDER BY 1"
)
# What can go wrong talking to a node that stops, restarts or is still recovering.
NODE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # A FATAL sent to an idle session (the node shuts down) leaves the protocol mid-error.
    asyncpg.InternalClientError,
)


@dataclass
class Writer:
    """One node's writer: its ids, what became of them, and when."""

    database: dict[str, Any]
    node: str
    index: int
    interval: float
    burst: int
    committed: dict[int, float] = field(default_factory=dict)  # id -> time.time() COMMIT returned
    unknown: set[int] = field(default_factory=set)  # ids whose statement raised
    sent: dict[int, float] = field(default_factory=dict)  # id -> when its INSERT was sent
    errors: list[str] = field(default_factory=list)  # the latest few, for failure messages
    kinds: set[str] = field(default_factory=set)  # every distinct error class and message
    _sequence: int = 0
    _resumed: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._resumed.set()

    def _next_ids(self) -> list[int]:
        ids = [self.index * ID_SPAN + self._sequence + i + 1 for i in range(self.burst)]
        self._sequence += self.burst
        return ids

    def _note(self, exc: BaseException) -> None:
        self.errors = [*self.errors[-4:], f"{type(exc).__name__}: {exc}"]
        if len(self.kinds) < 100:
            self.kinds.add(self.errors[-1])

    async def _nap(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def run(self, max_duration: float) -> None:
        """Commit until stopped or `max_duration` has passed, reconnecting whenever needed."""
        deadline = time.monotonic() + max_duration
        conn: asyncpg.Connection | None = None  # type: ignore[type-arg]
        backoff = 0.05
        try:
            while not self._stopping.is_set() and time.monotonic() < deadline:
                if not self._resumed.is_set():
                    self._idle.set()
                    await self._resumed.wait()
                    continue
                self._idle.clear()
                if conn is None:
                    try:
                        conn = await asyncio.wait_for(connect(self.database, self.node), 5)
                        backoff = 0.05
                    except NODE_ERRORS as exc:
                        self._note(exc)
                        await self._nap(backoff)
                        backoff = min(backoff * 2, 1.0)
                        continue
                ids = self._next_ids()
                self.sent.update(dict.fromkeys(ids, time.time()))
                try:
                    await conn.execute(INSERT, ids, timeout=10)
                except asyncpg.UniqueViolationError:
                    raise  # ids of two writers collided: the harness is wrong, not the node
                except NODE_ERRORS as exc:
                    self.unknown.update(ids)
                    self._note(exc)
                    conn.terminate()
                    conn = None
                    continue
                self.committed.update(dict.fromkeys(ids, time.time()))
                await self._nap(self.interval)
        finally:
            self._idle.set()
            if conn is not None:
                conn.terminate()

    def committed_before(self, moment: float) -> set[int]:
        """Ids whose COMMIT had returned by `moment` (time.time())."""
        return {i for i, at in self.committed.items() if at < moment}

    def sent_after(self, moment: float) -> set[int]:
        """Ids whose INSERT was sent after `moment`: not committed before it anywhere."""
        return {i for i, at in self.sent.items() if at > moment}


class Load:
    """The writers of one `writers(...)` block."""

    def __init__(
        self, *, interval: float, burst: int, max_duration: float, taken: Collection[int] = ()
    ) -> None:
        self.writers: dict[str, Writer] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._interval, self._burst, self._max = interval, burst, max_duration
        self._taken = set(taken)  # writer indexes whose ids exist already

    def start(self, database: dict[str, Any], node: str) -> Writer:
        """A writer on `node` (which must not have a running one); its ids are new ones."""
        assert node not in self._tasks or self._tasks[node].done(), f"{node} already writes"
        index = min(set(range(1, len(self._taken) + 2)) - self._taken)
        self._taken.add(index)
        writer = Writer(database, node, index, self._interval, self._burst)
        self.writers[node] = writer
        self._tasks[node] = asyncio.create_task(writer.run(self._max), name=f"writer-{node}")
        return writer

    async def pause(self, *nodes: str) -> None:
        """Pause these writers (all when none is named); returns once none is mid-commit."""
        chosen = [self.writers[n] for n in nodes or self.writers]
        for writer in chosen:
            writer._resumed.clear()
        for writer in chosen:
            await asyncio.wait_for(writer._idle.wait(), 30)

    def resume(self, *nodes: str) -> None:
        for writer in [self.writers[n] for n in nodes or self.writers]:
            writer._resumed.set()

    async def stop(self) -> None:
        """Stop every writer and wait until each has closed its connection."""
        for writer in self.writers.values():
            writer._stopping.set()
            writer._resumed.set()
        await asyncio.gather(*self._tasks.values())

    def committed(self, *nodes: str) -> set[int]:
        """Ids committed by the writers of these nodes (all when none is named)."""
        return {i for n in nodes or self.writers for i in self.writers[n].committed}

    def unknown(self, *nodes: str) -> set[int]:
        return {i for n in nodes or self.writers for i in self.writers[n].unknown}

    def committed_before(self, moment: float) -> set[int]:
        return {i for w in self.writers.values() for i in w.committed_before(moment)}

    def sent_after(self, moment: float) -> set[int]:
        return {i for w in self.writers.values() for i in w.sent_after(moment)}

    async def progress(self, rows: int = 25, *nodes: str, timeout: float = 60) -> None:
        """Wait until each of these writers (all when none is named) has committed `rows`
        more rows: the load really runs, not just its tasks."""
        chosen = [self.writers[n] for n in nodes or self.writers]
        wanted = {w.node: len(w.committed) + rows for w in chosen}
        deadline = time.monotonic() + timeout
        while any(len(w.committed) < wanted[w.node] for w in chosen):
            for writer in chosen:
                task = self._tasks[writer.node]
                if task.done() and task.exception() is not None:
                    raise AssertionError(f"writer on {writer.node} failed") from task.exception()
            stuck = [
                f"{w.node}: {w.errors[-1:]}" for w in chosen if len(w.committed) < wanted[w.node]
            ]
            assert time.monotonic() < deadline, f"writers made no progress: {stuck}"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def writers(
    database: dict[str, Any],
    nodes: Sequence[str] | None = None,
    *,
    interval: float = 0.02,
    burst: int = 1,
    max_duration: float = 600.0,
) -> AsyncIterator[Load]:
    """A writer on each node (every node of `database` when `nodes` is None), started once
    `items` exists everywhere (DDL is not replicated), stopped when the block ends."""
    chosen = list(nodes or nodes_of(database))
    taken: set[int] = set()
    for node in nodes_of(database):
        await _execute(database, node, TABLE)
        # A database made from a backup holds rows of earlier writers: never reuse their ids.
        taken |= {i // ID_SPAN for i in await ids_on(database, node) if i >= ID_SPAN}
    load = Load(interval=interval, burst=burst, max_duration=max_duration, taken=taken)
    for node in chosen:
        load.start(database, node)
    try:
        yield load
    finally:
        await load.stop()


async def _execute(database: dict[str, Any], node: str, sql: str) -> None:
    conn = await connect(database, node)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass(frozen=True)
class NodeState:
    """What settle compares: the row count of `items` and a digest of every user table."""

    count: int
    digest: str


async def node_state(database: dict[str, Any], node: str) -> NodeState:
    conn = await connect(database, node)
    try:
        parts = []
        for table in await conn.fetch(USER_TABLES):
            name = table[0]  # format('%I.%I') from the catalog: quoted by the server
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)),"
                f" '') AS md5 FROM {name} t"
            )
            parts.append(f"{name}={row['n']}:{row['md5']}")
        count = await conn.fetchval("SELECT count(*) FROM items")
    finally:
        await conn.close()
    return NodeState(count=int(count), digest=";".join(parts))


async def settle(
    database: dict[str, Any], nodes: Collection[str] | None = None, *, timeout: float = 60
) -> dict[str, NodeState]:
    """Wait until every node (of `nodes`, default all) has the same count and digest of every
    user table; the states by node. Call it once the writers have stopped: every row exists on
    the node that wrote it, so equal states cannot be a moment of a replication in flight."""
    chosen = sorted(nodes or nodes_of(database))
    deadline = time.monotonic() + timeout
    states: dict[str, NodeState | str] = {}
    while True:
        for node in chosen:
            try:
                states[node] = await node_state(database, node)
            except NODE_ERRORS as exc:
                states[node] = f"unreachable ({type(exc).__name__}: {exc})"
        if len({str(s) for s in states.values()}) == 1 and all(
            isinstance(s, NodeState) for s in states.values()
        ):
            return {n: s for n, s in states.items() if isinstance(s, NodeState)}
        if time.monotonic() >= deadline:
            shown = "; ".join(
                f"{n}: {s.count} rows, {s.digest}" if isinstance(s, NodeState) else f"{n}: {s}"
                for n, s in states.items()
            )
            raise AssertionError(
                f"nodes did not converge in {timeout:g}s: {shown}"
                + "".join(f"; {line}" for line in await _differences(database, chosen))
            )
        await asyncio.sleep(0.25)


async def _differences(database: dict[str, Any], nodes: Sequence[str]) -> list[str]:
    """Which rows of `items` each node lacks that another node holds."""
    found = {}
    for node in nodes:
        with contextlib.suppress(*NODE_ERRORS):
            found[node] = await ids_on(database, node)
    everywhere = set().union(*found.values())
    return [
        line.replace("committed rows", "rows held elsewhere")
        for line in missing_report(found, everywhere)
    ]


async def ids_on(database: dict[str, Any], node: str) -> set[int]:
    """Every id of `items` on `node`."""
    conn = await connect(database, node)
    try:
        return {int(r[0]) for r in await conn.fetch("SELECT id FROM items")}
    finally:
        await conn.close()


def _by_writer(ids: Iterable[int]) -> str:
    counts: dict[int, int] = {}
    for i in ids:
        counts[i // ID_SPAN] = counts.get(i // ID_SPAN, 0) + 1
    return ", ".join(f"writer {w}: {n}" for w, n in sorted(counts.items()))


def missing_report(found: Mapping[str, set[int]], expected: set[int]) -> list[str]:
    """One line per node lacking some of `expected`: how many, from which writer, which."""
    lines = []
    for node, ids in sorted(found.items()):
        missing = expected - ids
        if missing:
            sample = sorted(missing)[:8]
            lines.append(
                f"{node} misses {len(missing)} of {len(expected)} committed rows "
                f"({_by_writer(missing)}; e.g. {sample})"
            )
    return lines


async def assert_holds(
    database: dict[str, Any], expected: set[int], nodes: Collection[str] | None = None
) -> None:
    """Every node (of `nodes`, default all) holds every id of `expected`."""
    found = {n: await ids_on(database, n) for n in sorted(nodes or nodes_of(database))}
    # Shown with `pytest -s`: the row counts a scenario ended with.
    print(
        f"holds: {', '.join(f'{n} {len(ids)} rows' for n, ids in found.items())}; "
        f"{len(expected)} committed rows expected on each"
    )
    problems = missing_report(found, expected)
    assert not problems, "; ".join(problems)


async def reaches_every_node(
    database: dict[str, Any], expected: set[int], *, timeout: float = 60, what: str = "rows"
) -> None:
    """Until every node holds every id of `expected` (as `assert_holds` checks it), while
    replication may still carry them."""

    async def held() -> bool:
        await assert_holds(database, expected)
        return True

    await eventually(held, timeout=timeout, what=f"{what} on every node")


def assert_between(found: set[int], at_least: set[int], at_most: set[int], what: str) -> None:
    """`found` holds every id of `at_least` and, of the writers' ids, none outside `at_most`."""
    missing = at_least - found
    extra = {i for i in found - at_most if i > ID_SPAN}
    assert not missing and not extra, (
        f"{what}: misses {len(missing)} of the {len(at_least)} rows it must hold "
        f"({_by_writer(missing)}; e.g. {sorted(missing)[:8]}), and holds {len(extra)} rows it "
        f"must not ({_by_writer(extra)}; e.g. {sorted(extra)[:8]})"
    )


def assert_prefix(found: set[int], load: Load, what: str) -> None:
    """A consistent copy holds, of each writer's committed rows, all up to some point and none
    after it (each writer commits one transaction after the other; ids whose commit raised may
    go either way)."""
    problems = []
    for writer in load.writers.values():
        mine = sorted(i for i in found if i // ID_SPAN == writer.index)
        if not mine:
            continue
        gaps = [i for i in writer.committed if i < mine[-1] and i not in found]
        strays = [i for i in mine if i not in writer.committed and i not in writer.unknown]
        if gaps or strays:
            problems.append(
                f"{writer.node}'s writer: {len(gaps)} committed rows missing before its last "
                f"row {mine[-1]} (e.g. {sorted(gaps)[:8]}), {len(strays)} rows never "
                f"committed (e.g. {strays[:8]})"
            )
    assert not problems, f"{what} is not a consistent point: " + "; ".join(problems)


@dataclass(frozen=True)
class Mark:
    """A recovery target read from a node's clock while writers run, and the rows a restore
    of that node's WAL to it must hold: every row the node showed before the target was read
    (`at_least`), none it did not show once every transaction open at the target had ended
    (`at_most`). Rows committing in between (a few at most) may go either way."""

    node: str
    target: str
    at_least: frozenset[int]
    at_most: frozenset[int]
    moment: float  # time.time() just after the target was read


async def mark(database: dict[str, Any], node: str, timeout: float = 30) -> Mark:
    """A time target on `node` now (see Mark)."""
    conn = await connect(database, node)
    try:
        before = {int(r[0]) for r in await conn.fetch("SELECT id FROM items")}
        target = await conn.fetchval("SELECT clock_timestamp()")
        moment = time.time()
        # Every transaction that committed by the target had its xid assigned before this one
        # (a snapshot's xmax would not do: it is the newest completed xid + 1, and a commit
        # still being flushed may lie above it); once none below it runs, a snapshot shows
        # every one of them.
        horizon = await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")

        async def ended() -> bool:
            xmin = await conn.fetchval(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
            )
            return bool(xmin >= horizon)

        await eventually(ended, timeout=timeout, interval=0.05, what="transactions to end")
        after = {int(r[0]) for r in await conn.fetch("SELECT id FROM items")}
    finally:
        await conn.close()
    return Mark(
        node=node,
        target=target.isoformat(),
        at_least=frozenset(before),
        at_most=frozenset(after),
        moment=moment,
    )
