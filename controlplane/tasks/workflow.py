"""Workflows: an ordered tuple of named, idempotent steps plus compensation on failure/cancel."""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from controlplane.tasks.inputs import TaskInput

if TYPE_CHECKING:
    from controlplane.tasks.context import StepContext

StepFn = Callable[["StepContext"], Awaitable[dict[str, Any] | None]]
CompensateFn = Callable[["StepContext", str], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    """One named step. Names are persisted: never rename one. A step observes before it acts,
    so running it again after a crash is safe; what it returns is saved as its state."""

    name: str
    run: StepFn


@dataclass(frozen=True)
class Workflow:
    """The steps of one task type, and what to do when the task fails or is canceled."""

    type: str
    steps: tuple[Step, ...]
    on_failure: CompensateFn | None = None
    on_cancel: CompensateFn | None = None
    retryable_steps: frozenset[str] = field(default_factory=frozenset)
    # What the task takes; its stored JSON is converted to this once per attempt.
    input_type: builtins.type[TaskInput] = TaskInput

    @property
    def step_names(self) -> list[str]:
        return [step.name for step in self.steps]
