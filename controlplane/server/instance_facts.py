"""Instance facts: what each running instance says about itself, observed by the monitor and
kept in memory for `/metrics` (up, role, timeline, archiver, WAL backlog, slots, subscriptions).

Every instance is observed on its own, bounded by a short timeout, and a new round never waits
for an instance whose previous observation is still running: a hung instance delays nothing but
its own facts, and a scrape only ever reads the last facts recorded here.

Observing changes one thing: an apply worker pglogical lost track of, found under a subscription
shown `down`, is ended so that pglogical can start a worker it sees.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from collections.abc import Iterable
from datetime import datetime

import asyncpg
import msgspec
from msgspec import Struct, field

from controlplane.errors import ControlPlaneError
from controlplane.nodes.common import ref_of
from controlplane.orchestrator.base import InstanceRef
from controlplane.pgbackrest.config import STANZA
from controlplane.replication.subscriptions import (
    release_stranded_workers,
    subscription_status,
)
from controlplane.store import databases, instances
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import Services

log = logging.getLogger(__name__)

# How long one instance may take to answer every question below, connection included.
OBSERVE_TIMEOUT = 5.0
# At most this many instances are asked at once.
OBSERVE_CONCURRENCY = 16
# Instances are observed while they are meant to be running and no operation is rebuilding them:
# a database being created, restored or deleted stops and starts its instances on purpose.
_UNOBSERVED_DATABASE_STATES = frozenset({"creating", "restoring", "deleting"})
_UNOBSERVED_INSTANCE_STATES = frozenset({"creating", "restoring", "stopped"})

# A replica's timeline is the one it streams (its control file names the timeline of its
# last restartpoint, which a replica that followed a promotion without a rewind keeps until
# the next one); a primary's, or a replica's that does not stream, its last checkpoint's.
_INSTANCE_SQL = """
SELECT pg_is_in_recovery() AS in_recovery,
       coalesce((SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'),
                (SELECT timeline_id FROM pg_control_checkpoint())) AS timeline,
       a.archived_count, a.failed_count, a.last_archived_time, a.last_failed_time,
       a.last_failed_wal,
       (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') AS ready_files
FROM pg_stat_archiver a
"""
# Retained: WAL kept for the slot (from its restart_lsn); lag: what a logical slot's consumer
# has not yet confirmed (from confirmed_flush_lsn), both up to the instance's current WAL.
_SLOTS_SQL = """
SELECT s.slot_name, s.slot_type, s.active,
       coalesce(pg_wal_lsn_diff(w.lsn, s.restart_lsn), 0)::float8 AS retained_bytes,
       CASE WHEN s.slot_type = 'logical'
            THEN pg_wal_lsn_diff(w.lsn, s.confirmed_flush_lsn)::float8 END AS lag_bytes
FROM pg_replication_slots s,
     LATERAL (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                          ELSE pg_current_wal_lsn() END AS lsn) w
ORDER BY s.slot_name
"""
# On a primary: each streaming standby (its application_name is its instance id), and how far
# its replay is behind this primary's WAL.
_STANDBYS_SQL = """
SELECT application_name, state, sync_state,
       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::float8 AS lag_bytes,
       coalesce(extract(epoch FROM replay_lag), 0)::float8 AS lag_seconds
FROM pg_stat_replication
WHERE application_name <> '' ORDER BY application_name
"""

# The tail of a pgBackRest log file (NULL when it does not exist).
_LOG_TAIL_SQL = """
SELECT pg_read_file($1, greatest(0, (pg_stat_file($1, true)).size - 16384), 16384, true)
"""
_ERROR_MARK = "ERROR: "
_ERROR_CHARS = 400


class StandbyFacts(Struct, frozen=True, kw_only=True):
    """One streaming standby as its primary sees it (pg_stat_replication)."""

    name: str
    state: str
    sync_state: str
    lag_bytes: float
    lag_seconds: float


class SlotFacts(Struct, frozen=True, kw_only=True):
    name: str
    type: str
    active: bool
    retained_bytes: float
    lag_bytes: float | None


class SubscriptionFacts(Struct, frozen=True, kw_only=True):
    name: str
    provider: str
    status: str
    slot_name: str = ""  # the slot on the provider this subscription reads


class ArchiverFacts(Struct, frozen=True, kw_only=True):
    """pg_stat_archiver, plus the `.ready` files still waiting in pg_wal/archive_status."""

    archived_count: int
    failed_count: int
    last_archived_time: datetime | None
    last_failed_time: datetime | None
    last_failed_wal: str | None
    ready_files: int
    # While archiving fails: pgBackRest's newest error from its archive-push logs, when the
    # instance could read them (None otherwise).
    last_error: str | None = None

    @property
    def failing(self) -> bool:
        """True when the newest attempt failed and WAL still waits: the last failure is newer
        than the last success (or nothing was ever archived)."""
        failed, archived = self.last_failed_time, self.last_archived_time
        if failed is None or self.ready_files <= 0:
            return False
        return archived is None or failed > archived


class InstanceFacts(Struct, kw_only=True):
    """One observation of one instance. Filled in as answers arrive: an instance that stops
    answering half way keeps what it did say (`error` tells why the rest is missing)."""

    instance: str
    database: str
    node: str
    role: str
    observed_at: float  # time.time() when the observation started
    observed_monotonic: float
    up: bool = False
    timeline: int | None = None
    archiver: ArchiverFacts | None = None
    slots: list[SlotFacts] = field(default_factory=list)
    subscriptions: list[SubscriptionFacts] | None = None
    # Primaries only: the standbys streaming from it.
    standbys: list[StandbyFacts] = field(default_factory=list)
    error: str | None = None

    def age(self, now_monotonic: float | None = None) -> float:
        """Seconds since this observation started."""
        now = time.monotonic() if now_monotonic is None else now_monotonic
        return max(0.0, now - self.observed_monotonic)


class InstanceFactsBook:
    """The newest facts of every observed instance, in this server's memory."""

    def __init__(self) -> None:
        self._facts: dict[str, InstanceFacts] = {}
        # Moves with every change: answers built from these facts are kept until it does.
        self.version = 0

    def record(self, facts: InstanceFacts) -> None:
        self._facts[facts.instance] = facts
        self.version += 1

    def get(self, instance: str) -> InstanceFacts | None:
        return self._facts.get(instance)

    def retain(self, instance_ids: Iterable[str]) -> None:
        """Forget every instance not in `instance_ids` (removed, or no longer observed)."""
        keep = set(instance_ids)
        for gone in set(self._facts) - keep:
            del self._facts[gone]
            self.version += 1

    def snapshot(self) -> list[InstanceFacts]:
        """Every instance's facts, ordered by database and node."""
        return sorted(self._facts.values(), key=lambda f: (f.database, f.node, f.instance))


class InstanceObserver:
    """Starts one bounded observation per instance per round, records what each one says."""

    def __init__(
        self,
        services: Services,
        book: InstanceFactsBook,
        *,
        timeout: float = OBSERVE_TIMEOUT,
        concurrency: int = OBSERVE_CONCURRENCY,
    ) -> None:
        self._services = services
        self._book = book
        self._timeout = timeout
        self._limit = asyncio.Semaphore(concurrency)
        self._inflight: dict[str, asyncio.Task[InstanceFacts]] = {}

    async def observe_round(self) -> None:
        """Start observing every instance that should be running, except those whose previous
        observation has not finished; does not wait for the observations to finish."""
        targets = await self._targets()
        self._book.retain(row.id for row, _ in targets)
        for row, database_name in targets:
            running = self._inflight.get(row.id)
            if running is not None and not running.done():
                continue
            task = asyncio.create_task(self.observe(row, database_name), name=f"facts {row.id}")
            self._inflight[row.id] = task
        for instance_id in [i for i, t in self._inflight.items() if t.done()]:
            del self._inflight[instance_id]

    async def wait(self) -> None:
        """Wait for the observations in flight (tests; shutdown)."""
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in self._inflight.values():
            task.cancel()
        await self.wait()
        self._inflight.clear()

    async def _targets(self) -> list[tuple[InstanceRow, str]]:
        pool = self._services.pool
        names = {
            d.id: str(d.spec.get("database_name") or "postgres")
            for d in await databases.list_databases(pool)
            if d.state not in _UNOBSERVED_DATABASE_STATES
        }
        return [
            (row, names[row.database_id])
            for row in await instances.list_instances(pool, replicas=True)
            if row.database_id in names
            and row.desired == "running"
            and row.state not in _UNOBSERVED_INSTANCE_STATES
        ]

    async def observe(self, row: InstanceRow, database_name: str) -> InstanceFacts:
        """Observe one instance within the timeout and record the facts, complete or not."""
        facts = InstanceFacts(
            instance=row.id,
            database=row.database_id,
            node=row.node_name,
            role=row.role,
            observed_at=time.time(),
            observed_monotonic=time.monotonic(),
        )
        async with self._limit:
            try:
                await asyncio.wait_for(self._read(row, database_name, facts), self._timeout)
            except TimeoutError:
                facts.error = f"no answer within {self._timeout:g} s"
            except ControlPlaneError as exc:
                facts.error = exc.message
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                facts.error = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug here must not end the observations of the others
                log.exception("observing instance %s failed", row.id)
                facts.error = f"observation failed: {type(exc).__name__}"
        self._note_archive_failures(facts)
        self._book.record(facts)
        return facts

    async def _read(self, row: InstanceRow, database_name: str, facts: InstanceFacts) -> None:
        orchestrator = self._services.orchestrator
        ref = ref_of(row)
        try:
            conn = await orchestrator.connect(ref, database_name)
        except asyncpg.InvalidCatalogNameError:
            # The application database is gone: the instance still answers for the rest.
            conn = await orchestrator.connect(ref, "postgres")
            database_name = "postgres"
        facts.up = True
        try:
            await _read_instance(conn, facts)
            if facts.archiver is not None and facts.archiver.failing:
                facts.archiver = msgspec.structs.replace(
                    facts.archiver, last_error=await self._archive_error(conn, ref)
                )
            if database_name != "postgres":
                facts.subscriptions = [
                    SubscriptionFacts(
                        name=s.name,
                        provider=s.provider_node,
                        status=s.status,
                        slot_name=s.slot_name,
                    )
                    for s in await subscription_status(conn)
                ]
                if any(s.status == "down" for s in facts.subscriptions):
                    await self._release_strays(conn, row)
            await conn.close(timeout=self._timeout)
        finally:
            if not conn.is_closed():
                conn.terminate()

    async def _release_strays(self, conn: asyncpg.Connection, row: InstanceRow) -> None:
        """The one thing an observation changes: an apply worker pglogical lost track of keeps
        its subscription `down` for good (`release_stranded_workers`), and is ended."""
        for name in await release_stranded_workers(conn):
            log.warning(
                "instance %s: ended an apply worker of subscription %s that pglogical had "
                "lost track of (its subscription showed down); pglogical starts it again",
                row.id,
                name,
            )

    async def _archive_error(self, conn: asyncpg.Connection, ref: InstanceRef) -> str | None:
        """pgBackRest's newest `ERROR:` line in its archive-push logs, read by the instance
        itself (the logs are its OS user's): None when none is found or they cannot be read."""
        log_dir = posixpath.join(
            self._services.orchestrator.file_path(ref, ""), "pgbackrest", "log"
        )
        found: list[str] = []
        for name in (f"{STANZA}-archive-push-async.log", f"{STANZA}-archive-push.log"):
            try:
                text = await conn.fetchval(_LOG_TAIL_SQL, posixpath.join(log_dir, name))
            except asyncpg.PostgresError:
                return None  # not allowed to read files: the error stays unknown
            found += error_entries(text or "")
        # Entries start with their time ("2026-01-02 03:04:05.678"): the greatest is the newest.
        newest = max(found, key=lambda entry: entry[:23], default=None)
        if newest is None:
            return None
        message = " ".join(newest.split(_ERROR_MARK, 1)[1].split())
        return message if len(message) <= _ERROR_CHARS else message[: _ERROR_CHARS - 1] + "…"

    def _note_archive_failures(self, facts: InstanceFacts) -> None:
        """Say in the server log when archiving fails anew (once per observed increase)."""
        before = self._book.get(facts.instance)
        now, then = facts.archiver, before.archiver if before else None
        if now is None or then is None or now.failed_count <= then.failed_count:
            return
        log.warning(
            "instance %s: archiving WAL %s failed (%d failure(s) so far, %d file(s) waiting)",
            facts.instance,
            now.last_failed_wal or "?",
            now.failed_count,
            now.ready_files,
        )


def error_entries(log: str) -> list[str]:
    """The `ERROR:` entries of a pgBackRest log, each with its continuation lines (a message
    over several lines goes on in lines indented under the first)."""
    entries: list[list[str]] = []
    for line in log.splitlines():
        if line[:1].isspace() and entries:
            entries[-1].append(line)
        elif line[:1].isdigit():
            entries.append([line])
    return ["\n".join(e) for e in entries if _ERROR_MARK in e[0]]


async def _read_instance(conn: asyncpg.Connection, facts: InstanceFacts) -> None:
    row = await conn.fetchrow(_INSTANCE_SQL)
    assert row is not None  # pg_stat_archiver always has its one row
    facts.role = "replica" if row["in_recovery"] else "primary"
    facts.timeline = int(row["timeline"])
    facts.archiver = ArchiverFacts(
        archived_count=int(row["archived_count"]),
        failed_count=int(row["failed_count"]),
        last_archived_time=row["last_archived_time"],
        last_failed_time=row["last_failed_time"],
        last_failed_wal=row["last_failed_wal"],
        ready_files=int(row["ready_files"]),
    )
    facts.slots = [
        SlotFacts(
            name=r["slot_name"],
            type=r["slot_type"],
            active=bool(r["active"]),
            retained_bytes=float(r["retained_bytes"]),
            lag_bytes=None if r["lag_bytes"] is None else float(r["lag_bytes"]),
        )
        for r in await conn.fetch(_SLOTS_SQL)
    ]
    if facts.role == "primary":
        facts.standbys = [
            StandbyFacts(
                name=r["application_name"],
                state=r["state"],
                sync_state=r["sync_state"],
                lag_bytes=float(r["lag_bytes"]),
                lag_seconds=float(r["lag_seconds"]),
            )
            for r in await conn.fetch(_STANDBYS_SQL)
        ]
