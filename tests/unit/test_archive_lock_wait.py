"""stanza-create and check wait for the archive lock the node's own archiver holds briefly."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from controlplane.errors import ControlPlaneError
from controlplane.nodes import backups
from controlplane.orchestrator.base import InstanceRef
from controlplane.system.process import CommandResult

REF = InstanceRef(instance_id="db-n1", database_id="db", node_name="n1", host_id="local", port=1)
LOCKED = "ERROR: [050]: unable to acquire lock on file 'db-archive.lock'"


class Runner:
    """Answers exit 50 `busy` times, then `final`."""

    def __init__(self, busy: int, final: int = 0) -> None:
        self.busy, self.final, self.calls = busy, final, 0

    async def exec(self, ref: InstanceRef, argv: Sequence[str], **_: Any) -> CommandResult:
        self.calls += 1
        if self.calls <= self.busy:
            return CommandResult(50, [LOCKED])
        return CommandResult(self.final, ["done"])


def _services(runner: Runner) -> Any:
    return SimpleNamespace(orchestrator=runner)


async def test_stanza_create_waits_for_the_archive_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 50 from stanza-create is retried until the lock is free."""
    monkeypatch.setattr(backups.asyncio, "sleep", _no_sleep)
    runner = Runner(busy=3)
    setup = backups.BackupSetup(ref=REF, config_path="/x.conf")
    result = await backups.run_pgbackrest(
        _services(runner), setup, ["pgbackrest", "stanza-create"], subject="stanza creation"
    )
    assert result.exit_code == 0 and runner.calls == 4


async def test_a_backup_holding_the_lock_is_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exit 50 from a backup means another backup runs: it fails at once, in words."""
    monkeypatch.setattr(backups.asyncio, "sleep", _no_sleep)
    runner = Runner(busy=3)
    setup = backups.BackupSetup(ref=REF, config_path="/x.conf")
    with pytest.raises(ControlPlaneError, match="lock held"):
        await backups.run_pgbackrest(
            _services(runner), setup, ["pgbackrest", "backup"], subject="backup"
        )
    assert runner.calls == 1


async def test_the_wait_for_the_lock_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock that never frees fails the command after the bounded wait."""
    monkeypatch.setattr(backups.asyncio, "sleep", _no_sleep)
    monkeypatch.setattr(backups, "_ARCHIVE_LOCK_WAIT", 0.0)
    runner = Runner(busy=10**6)
    setup = backups.BackupSetup(ref=REF, config_path="/x.conf")
    with pytest.raises(ControlPlaneError):
        await backups.run_pgbackrest(
            _services(runner), setup, ["pgbackrest", "check"], subject="archive check"
        )
    assert runner.calls <= 2


async def _no_sleep(_: float) -> None:
    return None
