"""What a running step sees: the services, its task, its log and the workflow's saved state."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from controlplane.errors import TaskCanceledError
from controlplane.settings import Settings
from controlplane.store.pool import Pool
from controlplane.store.tasks import TaskRow
from controlplane.tasks.inputs import TaskInput
from controlplane.tasks.logger import TaskLogger

if TYPE_CHECKING:
    from controlplane.orchestrator.base import Orchestrator
    from controlplane.server.etcd import EmbeddedEtcd
    from controlplane.server.instance_facts import InstanceFactsBook
    from controlplane.spec.pg_settings import SettingRules
    from controlplane.spec.secrets import SecretBox


InputT = TypeVar("InputT", bound=TaskInput)


@dataclass
class Services:
    """Long-lived collaborators, built once at start-up and passed down (no globals)."""

    settings: Settings
    pool: Pool
    orchestrator: Orchestrator
    secret_box: SecretBox
    # The installed server's setting rules (`load_setting_rules`): postgresql_conf values are
    # checked against them at request time; None when the server binary could not be read.
    setting_rules: SettingRules | None = None
    # What the monitor last observed of each instance (read routes answer from it).
    facts: InstanceFactsBook = field(default_factory=lambda: _new_facts_book())
    # Patroni's etcd, for nodes with replicas: started (or adopted) on first use.
    dcs: EmbeddedEtcd | None = None


def _new_facts_book() -> InstanceFactsBook:
    from controlplane.server.instance_facts import InstanceFactsBook  # it imports this module

    return InstanceFactsBook()


@dataclass
class StepContext:
    """Handed to every step; `state` merges what earlier steps of this task returned."""

    services: Services
    task: TaskRow
    log: TaskLogger
    state: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    # The task's input as its workflow's `input_type` (the worker converts it once per attempt).
    input: TaskInput = field(default_factory=TaskInput)

    def input_as(self, kind: type[InputT]) -> InputT:
        """The task's input, typed: `kind` must be the workflow's input type (or a base)."""
        if not isinstance(self.input, kind):
            raise TypeError(
                f"task {self.task.task_id} ({self.task.type}) takes "
                f"{type(self.input).__name__}, not {kind.__name__}"
            )
        return self.input

    @property
    def database_id(self) -> str:
        return self.task.database_id

    def failpoint(self, point: str) -> None:
        """Crash-test aid: SIGKILL this server here when CONTROLPLANE_CRASH_AFTER_STEP names
        `<task type>:<point>`: a step name (the worker calls this after each step commits) or a
        point inside a step (e.g. `update:create_replication_mesh:nodes_ready`)."""
        if self.services.settings.crash_after_step == f"{self.task.type}:{point}":
            os.kill(os.getpid(), signal.SIGKILL)

    def check_cancel(self) -> None:
        """Raise between units of work when a cancel was requested."""
        if self.cancel_requested:
            raise TaskCanceledError(f"task {self.task.task_id} was canceled")
