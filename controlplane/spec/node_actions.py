"""Bodies of the actions on a node's cluster (switchover, failover) and on one instance
(restart), as pgEdge's API takes them. An empty body means every field's default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

from msgspec import Meta, Struct

from controlplane.errors import InvalidInputError
from controlplane.spec.paths import problem
from controlplane.spec.validate import parse_request

InstanceId = Annotated[str, Meta(min_length=1, max_length=63)]
# Further ahead than this is surely a typo (a year, a month): refused rather than kept waiting.
MAX_SCHEDULE_AHEAD = timedelta(days=31)


class _Action(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of the action bodies: unknown fields are rejected."""


class SwitchoverRequest(_Action, kw_only=True):
    """Hand the node's primary role to a replica: `candidate_instance_id`, or else the
    healthiest one; now, or at `scheduled_at` (RFC 3339 with a UTC offset)."""

    candidate_instance_id: InstanceId | None = None
    scheduled_at: datetime | None = None


class FailoverRequest(_Action, kw_only=True):
    """Promote a replica without the primary's consent. Refused while the primary is healthy
    unless `skip_validation` (a failover may lose what the primary had not streamed)."""

    candidate_instance_id: InstanceId | None = None
    skip_validation: bool = False


class RestartRequest(_Action, kw_only=True):
    """Restart an instance now, or at `scheduled_at` (RFC 3339 with a UTC offset)."""

    scheduled_at: datetime | None = None


ActionT = TypeVar("ActionT", SwitchoverRequest, FailoverRequest, RestartRequest)


def parse_action(body: bytes, model: type[ActionT]) -> ActionT:
    """Parse an action body (empty means `{}`); a scheduled time must carry its offset and lie
    within `MAX_SCHEDULE_AHEAD` (a time already past means now)."""
    request = parse_request(body if body.strip() else b"{}", model)
    at = getattr(request, "scheduled_at", None)
    if at is not None:
        if at.tzinfo is None:
            message = "needs a UTC offset (for example 2026-12-01T22:00:00Z)"
            raise InvalidInputError([problem("scheduled_at", message)])
        if at - datetime.now(UTC) > MAX_SCHEDULE_AHEAD:
            message = f"is more than {MAX_SCHEDULE_AHEAD.days} days ahead"
            raise InvalidInputError([problem("scheduled_at", message)])
    return request


def parse_switchover(body: bytes) -> SwitchoverRequest:
    return parse_action(body, SwitchoverRequest)


def parse_failover(body: bytes) -> FailoverRequest:
    return parse_action(body, FailoverRequest)


def parse_restart(body: bytes) -> RestartRequest:
    return parse_action(body, RestartRequest)
