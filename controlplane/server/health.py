"""Database health: from the instances' latest observations, whether a database is `degraded`
and why (WAL archiving keeps failing, a subscription stays down).

A problem counts once it has been seen for longer than a grace period without a break, so a
restart or a retry that soon succeeds does not flap the database's state. The functions here
are pure: the caller keeps the `Since` map from one assessment to the next.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from msgspec import Struct

from controlplane.server.instance_facts import ArchiverFacts, InstanceFacts

# The pglogical status of a subscription that works.
REPLICATING = "replicating"


class Problem(Struct, frozen=True, kw_only=True):
    """One thing wrong now: `key` names it across observations, `reason` says it in words."""

    key: str
    reason: str


class Sighting(Struct, frozen=True, kw_only=True):
    """A problem seen without a break since `first` (epoch seconds)."""

    first: float
    reason: str


# Problem key -> its sighting, handed from one assessment to the next.
Since = dict[str, Sighting]


class Assessment(Struct, frozen=True, kw_only=True):
    """What is wrong for longer than the grace (`reasons`, empty when healthy), and the
    problems' first sightings to hand to the next assessment."""

    reasons: list[str]
    since: Since

    @property
    def degraded(self) -> bool:
        return bool(self.reasons)

    @property
    def message(self) -> str | None:
        """The reasons as one line, the database's error while it is degraded."""
        return "; ".join(self.reasons) if self.reasons else None


def archiving_reason(node: str, archiver: ArchiverFacts) -> str:
    """`n1: archiving is failing: <WAL> (<pgBackRest's error>)`."""
    text = f"{node}: archiving is failing: {archiver.last_failed_wal or 'unknown WAL'}"
    return f"{text} ({archiver.last_error})" if archiver.last_error else text


def problems_of(facts: InstanceFacts) -> list[Problem]:
    """What one instance's observation shows wrong: failing archiving (any role: a standby
    archives with archive_mode=always), and subscriptions that are not replicating (a
    primary's only: a standby's pglogical workers do not run)."""
    found: list[Problem] = []
    if facts.archiver is not None and facts.archiver.failing:
        found.append(
            Problem(
                key=f"{facts.instance}/archiving",
                reason=archiving_reason(facts.node, facts.archiver),
            )
        )
    if facts.role == "primary":
        for sub in facts.subscriptions or []:
            if sub.status == REPLICATING:
                continue
            state = "down" if sub.status == "down" else f"down ({sub.status})"
            found.append(
                Problem(
                    key=f"{facts.instance}/subscription/{sub.name}",
                    reason=f"{facts.node}: subscription {sub.name} is {state}",
                )
            )
    return found


def assess(
    observations: Iterable[InstanceFacts],
    since: Mapping[str, Sighting],
    *,
    grace: float,
) -> Assessment:
    """Assess one database from its instances' latest observations.

    `since` is the previous assessment's: a problem still seen keeps its first sighting, one
    no longer seen is forgotten. An instance that did not answer (down, or its observation
    failed half way) says nothing new: its problems stay as they were, so a hung instance
    cannot make a failing one look healthy.
    """
    kept: Since = {}
    reasons: list[str] = []
    for facts in observations:
        if not facts.up or facts.error is not None:
            prefix = f"{facts.instance}/"
            seen = {k: s for k, s in since.items() if k.startswith(prefix)}
        else:
            seen = {
                p.key: Sighting(
                    first=since[p.key].first if p.key in since else facts.observed_at,
                    reason=p.reason,
                )
                for p in problems_of(facts)
            }
        kept.update(seen)
        reasons += [s.reason for s in seen.values() if facts.observed_at - s.first >= grace]
    return Assessment(reasons=reasons, since=kept)
