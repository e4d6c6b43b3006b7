"""Runtime: what one `serve` process runs besides HTTP — store, worker, wake-ups, monitor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from controlplane.errors import ConflictError
from controlplane.nodes.backups import effective_backup_config
from controlplane.nodes.common import task_secrets
from controlplane.orchestrator.base import Orchestrator
from controlplane.orchestrator.local import LocalOrchestrator
from controlplane.scheduler.loop import Scheduler
from controlplane.server.etcd import EmbeddedEtcd
from controlplane.server.monitor import Monitor
from controlplane.settings import Settings
from controlplane.spec.pg_settings import load_setting_rules
from controlplane.spec.secrets import SecretBox
from controlplane.store import instances, tokens
from controlplane.store.changes import ChangeFeed
from controlplane.store.embedded import EmbeddedStore
from controlplane.store.migrate import migrate
from controlplane.store.pool import create_pool
from controlplane.tasks.context import Services
from controlplane.tasks.worker import Worker
from controlplane.workflows import all_workflows
from controlplane.workflows.backup_node import NODE_BACKUP
from controlplane.workflows.drill_backup import DRILL

log = logging.getLogger(__name__)


def make_orchestrator(settings: Settings) -> Orchestrator:
    if settings.orchestrator == "docker":
        # Imported here: only docker deployments need the docker SDK.
        from controlplane.orchestrator.docker_orchestrator import (
            DockerOrchestrator,
            load_docker_hosts,
        )

        hosts = load_docker_hosts(settings.docker_hosts, default_url=settings.docker_url)
        return DockerOrchestrator(settings, hosts=hosts)
    if settings.orchestrator == "swarm":
        from controlplane.orchestrator.swarm_orchestrator import SwarmOrchestrator

        return SwarmOrchestrator(settings)
    return LocalOrchestrator(settings)


class Runtime:
    """Starts the pieces in order and stops them in reverse."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._embedded: EmbeddedStore | None = None
        self._background: list[asyncio.Task[Any]] = []
        self.changes: ChangeFeed | None = None
        self.worker: Worker | None = None
        self.services: Services | None = None
        self.monitor: Monitor | None = None

    async def start(self) -> None:
        settings = self.settings
        settings.data_path.mkdir(parents=True, exist_ok=True)
        settings.data_path.chmod(0o755)
        dsn = settings.database_url
        if dsn is None:
            self._embedded = EmbeddedStore(settings)
            dsn = await self._embedded.start()
        pool = await create_pool(dsn)
        await migrate(pool)
        dcs = EmbeddedEtcd(settings)
        self.services = Services(
            settings=settings,
            pool=pool,
            orchestrator=make_orchestrator(settings),
            secret_box=SecretBox.for_settings(settings),
            setting_rules=await load_setting_rules(settings),
            dcs=dcs,
        )
        if await instances.any_supervised_by(pool, "patroni"):
            # Patroni's members need their DCS: adopt the running etcd, or start it again.
            await dcs.start()
        await self._ensure_admin_token()
        self.worker = Worker(self.services, all_workflows(), task_secrets)
        self.changes = ChangeFeed(dsn, on_task=self._on_notify)
        await self.changes.start()
        self._background.append(asyncio.create_task(self.worker.run(), name="worker"))
        self.monitor = Monitor(self.services, self.services.facts)
        self._background.append(asyncio.create_task(self.monitor.run(), name="monitor"))
        scheduler = Scheduler.from_services(
            self.services,
            backup_steps=NODE_BACKUP.step_names,
            drill_steps=DRILL.step_names,
            config_of=effective_backup_config,
        )
        self._background.append(asyncio.create_task(scheduler.run(), name="scheduler"))

    def _on_notify(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    async def _ensure_admin_token(self) -> None:
        """First start: create the `admin` token and write it, 0600, into the data dir."""
        assert self.services is not None
        path = self.settings.admin_token_path
        if await tokens.has_token(self.services.pool, "admin"):
            if not path.exists():
                log.info("admin token exists in the store; create more with `controlplane token`")
            return
        try:
            token = await tokens.create_token(self.services.pool, "admin", "admin")
        except ConflictError:
            # Another server on this store (a second replica starting at once) made it first.
            log.info("admin token created by another server; it is in that server's data dir")
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        # A record, not a bare print: a JSON server log stays one object per line. Warning: the
        # operator needs it even with a quieter log level.
        log.warning("admin token written to %s", path)

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(BaseException):
                await task
        if self.worker is not None:
            await self.worker.stop()
        if self.changes is not None:
            await self.changes.close()
        if self.services is not None:
            await self.services.pool.close()
        if self._embedded is not None:
            await self._embedded.stop()
        for path in tidy_run_dir(self.settings):
            log.info("removed socket directory %s", path)


# Made by store/embedded.py (the embedded store's socket) and orchestrator/local.py (every local
# instance's socket), both under Settings.run_dir.
_STORE_SOCKETS = "store"
_INSTANCE_SOCKETS = "i"


def tidy_run_dir(settings: Settings) -> list[Path]:
    """Remove the socket directories under /tmp that this data dir's servers make, where
    nothing needs them any more, after a clean stop; return those removed.

    - `<run_dir>/store` holds the embedded store's socket; the store was just stopped.
    - `<run_dir>/i` holds the local instances' sockets. Instances outlive the server, and a
      stopped one is started again without the directory being made anew, so it stays while
      any instance exists under `<data_dir>/instances` or `<data_dir>/hosts`, running or not.
    - `<run_dir>` itself, once empty, and the memory directory where a container's secrets
      are staged for its start (each start removes its own).

    Only empty directories go (rmdir: a live socket keeps its directory, whoever it belongs
    to), never through a symlink, and only ones owned by us or the instances' OS user.
    """
    run_dir = settings.run_dir
    owners = {os.geteuid()}
    with contextlib.suppress(KeyError):
        owners.add(pwd.getpwnam(settings.os_user).pw_uid)
    instance_dirs = [settings.data_path / "instances", settings.data_path / "hosts"]
    candidates = [run_dir / _STORE_SOCKETS]
    if not any(d.is_dir() and any(d.iterdir()) for d in instance_dirs):
        candidates.append(run_dir / _INSTANCE_SOCKETS)
    candidates += [settings.memory_dir, run_dir]
    removed = []
    for path in candidates:
        try:
            info = path.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners:
                continue
            path.rmdir()
        except OSError:  # missing, or not empty: in use
            continue
        removed.append(path)
    return removed
