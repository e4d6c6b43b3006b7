"""Instance monitor: reconcile instances with their desired state, derive database health (down
instances, failing archiving, subscriptions that are down), and observe every running
instance's health facts (kept in memory for `/metrics`)."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from controlplane.errors import ControlPlaneError, OperationInProgressError
from controlplane.nodes.common import ref_of
from controlplane.nodes.following import follow_failover
from controlplane.orchestrator.base import Orchestrator
from controlplane.server.health import Since, assess
from controlplane.server.instance_facts import InstanceFactsBook, InstanceObserver
from controlplane.store import databases, instances, task_runs, tasks
from controlplane.store.databases import DatabaseRow
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import Services
from controlplane.tasks.inputs import NodeActionInput
from controlplane.workflows.failover_node import FAILOVER

log = logging.getLogger(__name__)

# Only one server reconciles at a time (several may share a store).
_LOCK_KEY = 0x6D6F6E69746F72
_SETTLED = ("available", "degraded", "failed")
_PRUNE_EVERY = 3600.0
_ALL_DOWN = "no instance is running"
# After a failover task the monitor queued has failed, it follows inline for this long.
FAILOVER_TASK_BACKOFF = 60.0


async def _quiet(line: str) -> None:
    log.debug("monitor: %s", line)


# Operations that make, move or stop instances: while one runs, its database is not ours.
_OPERATING = (
    "status IN ('pending', 'running', 'canceling') AND type IN ('create', 'update', 'delete',"
    " 'restore', 'node_restore', 'switchover', 'failover', 'restart_instance', 'stop_instance',"
    " 'start_instance')"
)
_BUSY_SQL = f"SELECT EXISTS (SELECT 1 FROM tasks WHERE database_id = $1 AND {_OPERATING})"
# The monitor's verdict is a compare-and-set: it lands only on the state and error it was drawn
# from, and only while no operation holds the database (an operation sets its own state).
_SET_HEALTH_SQL = f"""
UPDATE databases SET state = $2, error = $3, updated_at = now()
WHERE id = $1 AND state = $4 AND error IS NOT DISTINCT FROM $5
  AND NOT EXISTS (SELECT 1 FROM tasks WHERE database_id = $1 AND {_OPERATING})
"""
_BEING_MADE = frozenset({"creating", "restoring"})


def _host_unreachable(orchestrator: Orchestrator, host_id: str) -> bool:
    """The host's engine or swarm node does not answer: its instance is not known to have
    failed, only to be out of reach (it is started again once the host answers)."""
    return any(h.id == host_id and h.state == "unreachable" for h in orchestrator.hosts())


class Monitor:
    """Periodically starts instances that should run and are down, marks what cannot start, and
    records each running instance's facts in `facts` (read by `/metrics`)."""

    def __init__(self, services: Services, facts: InstanceFactsBook | None = None) -> None:
        self._services = services
        self._last_prune = 0.0
        self.facts = facts if facts is not None else InstanceFactsBook()
        self.observer = InstanceObserver(services, self.facts)
        # Per database: the problems seen in its instances' facts, since when (see health).
        self._since: dict[str, Since] = {}

    async def run(self) -> None:
        """Reconcile and observe, each on its own loop: starting an instance (slow) never
        holds up the facts of the others, nor the other way round."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._reconcile_loop(), name="monitor reconcile")
                group.create_task(self._observe_loop(), name="monitor facts")
        finally:
            await self.observer.close()

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.sweep()
                await self._prune()
            except Exception:
                log.exception("monitor sweep failed")
            await asyncio.sleep(self._services.settings.monitor_interval)

    async def _observe_loop(self) -> None:
        while True:
            try:
                await self.observer.observe_round()
            except Exception:
                log.exception("monitor could not observe the instances")
            await asyncio.sleep(self._services.settings.monitor_interval)

    async def _prune(self) -> None:
        if time.monotonic() - self._last_prune < _PRUNE_EVERY and self._last_prune:
            return
        self._last_prune = time.monotonic()
        pruned = await task_runs.prune_finished_tasks(
            self._services.pool, older_than_days=self._services.settings.task_retention_days
        )
        if pruned:
            log.info(
                "pruned %d finished task(s) older than %d days",
                pruned,
                self._services.settings.task_retention_days,
            )

    async def sweep(self) -> None:
        """One reconciliation pass over every database that no operation is working on."""
        pool = self._services.pool
        async with pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_KEY):
                return
            busy = {
                r["database_id"]
                for r in await conn.fetch(
                    f"SELECT DISTINCT database_id FROM tasks WHERE {_OPERATING}"
                )
            }
            listed = await databases.list_databases(conn)
            for gone in set(self._since) - {d.id for d in listed}:
                del self._since[gone]
            for database in listed:
                if database.id in busy or database.state not in _SETTLED:
                    # An operation remakes it: what was seen before says nothing after.
                    self._since.pop(database.id, None)
                    continue
                # Read again now: an operation may have started on it since this sweep began
                # (reconciling the databases before it takes a while).
                if await conn.fetchval(_BUSY_SQL, database.id):
                    self._since.pop(database.id, None)
                    continue
                rows = [
                    r
                    for r in await instances.list_instances(conn, database.id, replicas=True)
                    if r.state not in _BEING_MADE  # a task is making it: not ours to start
                ]
                healthy = [await self._reconcile(row) for row in rows]
                await self._set_health(database, rows, healthy)
                await self._follow_primaries(database.id, str(database.spec["database_name"]), rows)

    async def _reconcile(self, row: InstanceRow) -> bool:
        """True when the instance runs as desired (starting it if it should run and does not)."""
        pool, orchestrator = self._services.pool, self._services.orchestrator
        if row.desired != "running":
            return False
        ref = ref_of(row)
        try:
            status = await orchestrator.status(ref)
            if status == "missing":
                raise ControlPlaneError(f"the data directory of instance {row.id} is missing")
            if status != "running":
                log.warning("instance %s is down; starting it", row.id)
                await orchestrator.start(ref, on_line=_quiet)
                log.info("instance %s started by the monitor", row.id)
        except (ControlPlaneError, OSError) as exc:
            message = exc.message if isinstance(exc, ControlPlaneError) else str(exc)
            lost = await asyncio.to_thread(_host_unreachable, orchestrator, row.host_id)
            state = "unreachable" if lost else "failed"
            if row.state != state or row.error != message:
                log.error("instance %s cannot run (%s): %s", row.id, state, message)
                await instances.set_state_of(pool, row.id, state, error=message)
            return False
        if row.state != "available" or row.error:
            await instances.set_state_of(pool, row.id, "available")
        return True

    async def _follow_primaries(
        self, database_id: str, database_name: str, rows: list[InstanceRow]
    ) -> None:
        """A node whose Patroni promoted a replica (a failover): record the new primary, and
        restart the other nodes' subscriptions to it at once (pglogical alone would retry only
        after 180 s)."""
        pool, facts = self._services.pool, self._services.facts
        for row in rows:
            seen = facts.get(row.id)
            if row.role != "replica" or seen is None or not seen.up or seen.role != "primary":
                continue
            if seen.observed_at <= row.updated_at.timestamp():
                continue  # seen before its role last changed: that says nothing now
            log.warning(
                "node %s of %s: %s is the primary now (failover); the mesh follows it",
                row.node_name,
                database_id,
                row.id,
            )
            if await self._failover_task(database_id, row):
                continue
            try:
                # The mesh first: the role is recorded once it follows (else the next sweep
                # tries again).
                await follow_failover(self._services, row, database_name)
            except (ControlPlaneError, OSError, asyncpg.PostgresError) as exc:
                log.error(
                    "node %s of %s: the mesh could not follow: %s", row.node_name, database_id, exc
                )
                continue
            async with pool.acquire() as conn:
                await instances.set_primary(conn, database_id, row.node_name, row.id)

    async def _failover_task(self, database_id: str, row: InstanceRow) -> bool:
        """Queue a `failover` task (trigger `system`) in which the mesh follows `row`, so that
        the task list and its log show the failover; True when one is queued or runs already.
        False when another operation holds the database, or when such a task failed less than
        FAILOVER_TASK_BACKOFF seconds ago: the mesh then follows at once here, without a task,
        rather than wait for it or queue a failed task on every pass."""
        task_input = NodeActionInput(candidate_instance_id=row.id, skip_validation=True)
        async with self._services.pool.acquire() as conn:
            failed = await tasks.failed_recently(
                conn,
                database_id,
                row.node_name,
                FAILOVER.type,
                trigger="system",
                seconds=FAILOVER_TASK_BACKOFF,
            )
            if failed is not None:
                # One failed task says why; until the back-off passes, each pass retries here
                # without adding another failed task to the list.
                return False
            try:
                task = await tasks.insert_task(
                    conn,
                    database_id=database_id,
                    type=FAILOVER.type,
                    node_name=row.node_name,
                    steps=FAILOVER.step_names,
                    trigger="system",
                    input=task_input,
                )
            except OperationInProgressError:
                held = await tasks.find_blocking_task(
                    conn, database_id, row.node_name, FAILOVER.type
                )
                return (
                    held is not None
                    and held.type == FAILOVER.type
                    and held.node_name == row.node_name
                )
        log.warning(
            "node %s of %s: failover task %s follows %s",
            row.node_name,
            database_id,
            task.task_id,
            row.id,
        )
        return True

    async def _set_health(
        self, database: DatabaseRow, rows: list[InstanceRow], healthy: list[bool]
    ) -> None:
        """Set the database's state from its instances: `failed` when none runs, `degraded`
        (with every reason) when some are down or their facts show a problem for longer than
        the grace, else `available`."""
        if not healthy:
            return
        observed = [f for row in rows if (f := self.facts.get(row.id)) is not None]
        health = assess(
            observed,
            self._since.get(database.id, {}),
            grace=self._services.settings.health_grace,
        )
        self._since[database.id] = health.since
        down = healthy.count(False)
        if down == len(healthy):
            wanted, message = "failed", _ALL_DOWN
        elif down or health.degraded:
            reasons = [f"{down} of {len(healthy)} instance(s) are down"] if down else []
            wanted, message = "degraded", "; ".join(reasons + health.reasons)
        else:
            wanted, message = "available", None
        state, error = database.state, database.error
        if state == "failed" and error != _ALL_DOWN:
            # A failed operation keeps its error until an update converges: running nodes alone
            # do not make it whole again. Only the monitor's own verdict is undone here.
            return
        if (wanted, message) == (state, error):
            return
        status = await self._services.pool.execute(
            _SET_HEALTH_SQL, database.id, wanted, message, state, error
        )
        if status == "UPDATE 0":
            return  # an operation took it meanwhile: its state wins
        if wanted == "degraded":
            log.warning("database %s is degraded: %s", database.id, message)
        elif state == "degraded":
            log.info("database %s is %s again", database.id, wanted)
