"""Worker: claims tasks, runs their steps under a heartbeat-renewed lease, honours cancel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import msgspec

from controlplane.errors import ControlPlaneError, ExternalCommandError, TaskCanceledError
from controlplane.store import task_runs, tasks
from controlplane.store.tasks import TaskRow
from controlplane.tasks.context import Services, StepContext
from controlplane.tasks.log_context import bind_task
from controlplane.tasks.logger import TaskLogger
from controlplane.tasks.workflow import Workflow

log = logging.getLogger(__name__)
SecretsFor = Callable[[Services, TaskRow], Awaitable[set[str]]]


class _Stop(Exception):
    """Why a running task's coroutine was interrupted from outside."""


class Worker:
    """Runs up to `worker_concurrency` tasks at once in this process."""

    def __init__(
        self, services: Services, workflows: Mapping[str, Workflow], secrets_for: SecretsFor
    ) -> None:
        self._services = services
        self._workflows = workflows
        self._secrets_for = secrets_for
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def settings(self) -> Any:
        return self._services.settings

    def wake(self) -> None:
        """Called on NOTIFY: a task may be waiting."""
        self._wake.set()

    async def run(self) -> None:
        """Claim and start tasks until stopped."""
        while not self._stopping:
            claimed = None
            if len(self._running) < self.settings.worker_concurrency:
                try:
                    claimed = await task_runs.claim_next_task(
                        self._services.pool,
                        worker_id=self.worker_id,
                        lease_seconds=self.settings.lease_seconds,
                    )
                except (OSError, ControlPlaneError) as exc:  # store briefly unreachable
                    log.warning("claiming a task failed: %s", exc)
            if claimed is not None:
                self._running[claimed.task_id] = asyncio.create_task(self._execute(claimed))
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)

    async def stop(self) -> None:
        """Interrupt running tasks without finishing them and hand their leases back, so this or
        another server resumes them at the first incomplete step."""
        self._stopping = True
        self._wake.set()
        for running in list(self._running.values()):
            running.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        with contextlib.suppress(Exception):
            await task_runs.expire_leases_of(self._services.pool, self.worker_id)

    async def _execute(self, row: TaskRow) -> None:
        # This asyncio task's own context: what it (and the tasks it starts) logs names the task.
        bind_task(str(row.task_id), row.database_id, row.node_name)
        try:
            await _TaskRun(self, row).run()
        except Exception:
            log.exception("task %s crashed in the worker", row.task_id)
        finally:
            self._running.pop(row.task_id, None)
            self._wake.set()


class _TaskRun:
    """One attempt at one task: heartbeat, steps, and the terminal transition."""

    def __init__(self, worker: Worker, row: TaskRow) -> None:
        self.worker = worker
        self.services = worker._services
        self.row = row
        self.stop_reason: str | None = None
        self.body: asyncio.Task[None] | None = None
        self.step: str | None = None  # the step running, named by an unexpected error

    async def run(self) -> None:
        workflow = self.worker._workflows.get(self.row.type)
        secrets = await self.worker._secrets_for(self.services, self.row)
        logger = await TaskLogger.open(
            self.services.pool,
            self.row.task_id,
            secrets,
            database_id=self.row.database_id,
            node=self.row.node_name,
        )
        ctx = StepContext(services=self.services, task=self.row, log=logger)
        ctx.cancel_requested = self.row.cancel_requested_at is not None
        heartbeat = asyncio.create_task(self._heartbeat(ctx))
        try:
            if workflow is None:
                await self._finish(ctx, "failed", f"no workflow for task type {self.row.type}")
                return
            try:
                ctx.input = msgspec.convert(self.row.input or {}, workflow.input_type)
            except msgspec.ValidationError as exc:
                await self._finish(ctx, "failed", f"the task's input is not valid: {exc}")
                return
            self.body = asyncio.create_task(self._run_steps(ctx, workflow))
            try:
                await asyncio.shield(self.body)
            except asyncio.CancelledError:
                # The server is stopping: interrupt the steps, leave the task to be resumed.
                self.stop_reason = self.stop_reason or "shutdown"
                self.body.cancel()
                with contextlib.suppress(BaseException):
                    await self.body
        finally:
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat

    async def _heartbeat(self, ctx: StepContext) -> None:
        interval = max(0.2, min(1.0, self.worker.settings.lease_seconds / 3))
        while True:
            await asyncio.sleep(interval)
            try:
                ours, cancel = await task_runs.renew_lease(
                    self.services.pool,
                    self.row.task_id,
                    worker_id=self.worker.worker_id,
                    lease_seconds=self.worker.settings.lease_seconds,
                )
            except Exception as exc:  # keep trying until the lease runs out
                log.warning("heartbeat of task %s failed: %s", self.row.task_id, exc)
                continue
            if not ours:
                self._interrupt("lease_lost")
                return
            if cancel and not ctx.cancel_requested:
                ctx.cancel_requested = True
                self._interrupt("cancel")

    def _interrupt(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            if self.body is not None:
                self.body.cancel()

    async def _run_steps(self, ctx: StepContext, workflow: Workflow) -> None:
        try:
            await self._steps(ctx, workflow)
        except asyncio.CancelledError:
            if self.stop_reason == "cancel":
                await self._compensate(ctx, workflow, "canceled", "canceled on request")
            elif self.stop_reason is None:
                raise
            # lease lost or shutdown: another attempt resumes; touch nothing.
        except TaskCanceledError:
            await self._compensate(ctx, workflow, "canceled", "canceled on request")
        except ControlPlaneError as exc:
            await self._compensate(ctx, workflow, "failed", exc.message)
        except asyncpg.PostgresError as exc:
            log.exception("task %s step %s raised a Postgres error", self.row.task_id, self.step)
            await self._compensate(ctx, workflow, "failed", f"postgres error{self._in()}: {exc}")
        except Exception as exc:
            log.exception("task %s step %s raised", self.row.task_id, self.step)
            await self._compensate(
                ctx, workflow, "failed", f"internal error{self._in()}: {type(exc).__name__}"
            )

    def _in(self) -> str:
        return f" in step {self.step}" if self.step else ""

    async def _steps(self, ctx: StepContext, workflow: Workflow) -> None:
        pool = self.services.pool
        saved = await tasks.get_steps(pool, self.row.task_id)
        by_name = {s.name: s for s in saved}
        if self.row.attempts > 1:
            await ctx.log.info(f"resuming task (attempt {self.row.attempts})")
        for position, step in enumerate(workflow.steps):
            previous = by_name.get(step.name)
            if previous is not None and previous.status == "completed":
                ctx.state.update(previous.state)
                continue
            ctx.check_cancel()
            self.step = step.name
            await task_runs.start_step(pool, self.row.task_id, position)
            await ctx.log.info(f"step {step.name} started", step=step.name)
            began = time.monotonic()
            result = await self._run_step(ctx, workflow, step)
            ctx.state.update(result)
            if not await task_runs.complete_step(
                pool, self.row.task_id, position, worker_id=self.worker.worker_id, state=result
            ):
                self.stop_reason = "lease_lost"
                return
            await ctx.log.info(
                f"step {step.name} completed in {time.monotonic() - began:.1f}s", step=step.name
            )
            ctx.failpoint(step.name)
        self.step = None
        await self._finish(ctx, "completed", None, result=ctx.state.get("result"))

    async def _run_step(self, ctx: StepContext, workflow: Workflow, step: Any) -> dict[str, Any]:
        attempts = 3 if step.name in workflow.retryable_steps else 1
        for attempt in range(1, attempts + 1):
            try:
                return dict(await step.run(ctx) or {})
            except ExternalCommandError as exc:
                if not exc.retryable or attempt == attempts:
                    raise
                delay = self.worker.settings.retry_backoff_seconds * attempt
                await ctx.log.warning(f"{exc.message}; retrying in {delay:.0f}s", step=step.name)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _compensate(
        self, ctx: StepContext, workflow: Workflow, status: str, message: str
    ) -> None:
        message = ctx.log.redact(message)
        await task_runs.end_open_steps(self.services.pool, self.row.task_id, status)
        await ctx.log.write("warning" if status == "canceled" else "error", message)
        handler = workflow.on_cancel if status == "canceled" else workflow.on_failure
        if handler is not None:
            try:
                await asyncio.shield(handler(ctx, message))
            except Exception as exc:
                log.exception("compensation of task %s failed", self.row.task_id)
                await ctx.log.error(f"cleanup after {status} failed: {type(exc).__name__}: {exc}")
        await self._finish(ctx, status, message)

    async def _finish(
        self,
        ctx: StepContext,
        status: str,
        error: str | None,
        result: dict[str, Any] | None = None,
    ) -> None:
        # The last entry commits with the terminal status: a follower that sees the task end
        # has every entry available.
        async with self.services.pool.acquire() as conn, conn.transaction():
            done = await task_runs.finish_task(
                conn,
                self.row.task_id,
                worker_id=self.worker.worker_id,
                status=status,
                error=error,
                result=result,
            )
            if done:
                await ctx.log.write(
                    "info" if status == "completed" else "warning",
                    f"task {status}" + (f": {error}" if error else ""),
                    db=conn,
                )
