"""Metrics without a store: the families made from instance facts, the exposition, the recovery
window replayed from recorded backups, and observations that a hung instance cannot hold up."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from controlplane.orchestrator.base import InstanceRef
from controlplane.server.instance_facts import (
    ArchiverFacts,
    InstanceFacts,
    InstanceFactsBook,
    InstanceObserver,
    SlotFacts,
    StandbyFacts,
    SubscriptionFacts,
)
from controlplane.server.metrics import (
    METRICS,
    RecordedSet,
    instance_families,
    recovery_window_start,
    render_metrics,
)
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import Services
from tests.support.metrics import parse

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def facts(node: str, **fields: Any) -> InstanceFacts:
    return InstanceFacts(
        instance=f"shop-{node}",
        database="shop",
        node=node,
        role="primary",
        observed_at=time.time(),
        observed_monotonic=time.monotonic(),
        **fields,
    )


def test_metric_names_follow_prometheus_conventions() -> None:
    """Every family is controlplane_*, counters (and only counters) end in _total, and no
    label is one Prometheus sets on scrape (`instance`, `job`)."""
    for name, spec in METRICS.items():
        assert re.fullmatch(r"controlplane_[a-z0-9_]+", name)
        assert name.endswith("_total") == (spec.kind == "counter"), name
        assert not {"instance", "job"} & set(spec.labels), name


def test_instance_facts_become_labelled_series() -> None:
    """An instance that answered exports up, timeline, archiver counters and times, its WAL
    backlog, slots and subscriptions; one that did not exports only up=0 and the facts' age."""
    failed_at = T0 + timedelta(minutes=5)
    n1 = facts(
        "n1",
        up=True,
        timeline=3,
        archiver=ArchiverFacts(
            archived_count=41,
            failed_count=7,
            last_archived_time=T0,
            last_failed_time=failed_at,
            last_failed_wal="000000030000000000000009",
            ready_files=4,
        ),
        slots=[
            SlotFacts(
                name="pgl_app_n1_n2",
                type="logical",
                active=True,
                retained_bytes=2048.0,
                lag_bytes=512.0,
            ),
            SlotFacts(name="phys", type="physical", active=False, retained_bytes=0, lag_bytes=None),
        ],
        subscriptions=[
            SubscriptionFacts(name="cp_sub_n2_to_n1", provider="n2", status="replicating"),
            SubscriptionFacts(name="cp_sub_n3_to_n1", provider="n3", status="down"),
        ],
        standbys=[
            StandbyFacts(
                name="shop-n1-h2",
                state="streaming",
                sync_state="async",
                lag_bytes=4096.0,
                lag_seconds=0.25,
            )
        ],
    )
    n2 = facts("n2", error="no answer within 5 s")
    n2.observed_monotonic -= 30
    types, samples = parse(render_metrics(instance_families([n1, n2])).decode())
    node1 = (("database", "shop"), ("node", "n1"))
    node2 = (("database", "shop"), ("node", "n2"))

    def at(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        return samples[(name, tuple(sorted(labels)))]

    up = "controlplane_instance_up"
    assert at(up, (*node1, ("instance_id", "shop-n1"), ("role", "primary"))) == 1
    assert at(up, (*node2, ("instance_id", "shop-n2"), ("role", "primary"))) == 0
    assert (
        at(
            "controlplane_instance_timeline",
            (*node1, ("instance_id", "shop-n1"), ("role", "primary")),
        )
        == 3
    )
    replica = (*node1, ("instance_id", "shop-n1-h2"))
    assert at("controlplane_instance_replay_lag_bytes", replica) == 4096
    assert at("controlplane_instance_replay_lag_seconds", replica) == 0.25
    assert types["controlplane_archiver_failed"] == "counter"
    assert at("controlplane_archiver_archived_total", node1) == 41
    assert at("controlplane_archiver_failed_total", node1) == 7
    assert at("controlplane_archiver_last_archived_timestamp_seconds", node1) == T0.timestamp()
    last_failed = "controlplane_archiver_last_failed_timestamp_seconds"
    assert at(last_failed, node1) == failed_at.timestamp()
    assert at("controlplane_wal_ready_files", node1) == 4
    slot = (*node1, ("slot", "pgl_app_n1_n2"))
    assert at("controlplane_replication_slot_retained_bytes", slot) == 2048
    assert at("controlplane_replication_slot_lag_bytes", slot) == 512
    assert at("controlplane_replication_slot_active", slot) == 1
    assert at("controlplane_replication_slot_active", (*node1, ("slot", "phys"))) == 0
    assert (
        "controlplane_replication_slot_lag_bytes",
        tuple(sorted((*node1, ("slot", "phys")))),
    ) not in samples
    sub = "controlplane_subscription_up"
    assert at(sub, (*node1, ("subscription", "cp_sub_n2_to_n1"), ("provider", "n2"))) == 1
    assert at(sub, (*node1, ("subscription", "cp_sub_n3_to_n1"), ("provider", "n3"))) == 0
    assert 29 < at("controlplane_instance_facts_age_seconds", node2) < 60
    assert at("controlplane_instance_facts_age_seconds", node1) < 5
    assert not [
        key
        for key in samples
        if key[0].startswith("controlplane_archiver") and dict(key[1])["node"] == "n2"
    ]


def test_exposition_has_process_metrics_and_escapes_labels() -> None:
    """The scrape's registry carries the process collector; quotes, backslashes and newlines
    in labels and help survive Prometheus' own parser; special floats use its spelling."""
    family = GaugeMetricFamily(
        "x_seconds", 'a "help" line\nwith \\ two lines', labels=["database", "node"]
    )
    family.add_metric(['we"ird\\na\nme', "n1"], 1.5)
    family.add_metric(["inf", "n1"], float("inf"))
    text = render_metrics([family]).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["x_seconds"].documentation == 'a "help" line\nwith \\ two lines'
    assert [s.labels["database"] for s in parsed["x_seconds"].samples] == ['we"ird\\na\nme', "inf"]
    assert [s.value for s in parsed["x_seconds"].samples] == [1.5, float("inf")]
    assert parsed["process_resident_memory_bytes"].samples[0].value > 0
    assert parsed["process_cpu_seconds"].type == "counter"
    assert text.endswith("\n")


def backup(label: str, day: float, type: str = "full", **fields: Any) -> RecordedSet:
    values: dict[str, Any] = {"repository_id": "posix", "system_id": "7001"} | fields
    return RecordedSet(label=label, type=type, stopped_at=T0 + timedelta(days=day), **values)


def test_recovery_window_keeps_the_newest_fulls_by_count() -> None:
    """With retention_full=2 the window starts at the older of the two newest fulls; sets
    expired by hand no longer count."""
    sets = [
        backup("F1", 0),
        backup("I1", 1, "incr"),
        backup("F2", 7),
        backup("D2", 8, "diff"),
        backup("F3", 14),
        backup("I3", 15, "incr"),
    ]
    retention = {"posix": (2, "count")}
    assert recovery_window_start(sets, retention, set()) == T0 + timedelta(days=7)
    assert recovery_window_start(sets, retention, {"F2", "D2"}) == T0 + timedelta(days=14)
    assert recovery_window_start(sets, {"posix": (9, "count")}, set()) == T0
    assert recovery_window_start(sets, {"s3": (2, "count")}, set()) is None
    assert recovery_window_start([], retention, set()) is None


def test_recovery_window_keeps_one_full_older_than_a_time_period() -> None:
    """With retention_full=10 days, every full newer than the period counts and so does the
    newest one older than it (pgBackRest keeps it so the whole period stays reachable)."""
    sets = [backup("F1", 0), backup("F2", 7), backup("F3", 14), backup("I3", 20, "incr")]
    assert recovery_window_start(sets, {"posix": (10, "time")}, set()) == T0 + timedelta(days=7)
    assert recovery_window_start(sets, {"posix": (30, "time")}, set()) == T0


def test_recovery_window_follows_the_newest_system_and_every_repository() -> None:
    """Sets of an older database system (before a restore) do not count; with two
    repositories the window starts at the oldest set either keeps; without a recorded full the
    oldest recorded set bounds it."""
    sets = [
        backup("OLD", 0, system_id="6000"),
        backup("F1", 3),
        backup("F2", 6),
        backup("S1", 1, repository_id="s3"),
        backup("S2", 2, repository_id="s3", type="incr"),
    ]
    retention = {"posix": (1, "count"), "s3": (1, "count")}
    assert recovery_window_start(sets[:3], retention, set()) == T0 + timedelta(days=6)
    assert recovery_window_start(sets, retention, set()) == T0 + timedelta(days=1)
    only_incr = [backup("I1", 4, "incr"), backup("I2", 5, "incr")]
    assert recovery_window_start(only_incr, retention, set()) == T0 + timedelta(days=4)


class _Orchestrator:
    """Reaches each instance at 127.0.0.1:<its port> (a stand-in for a real orchestrator)."""

    async def connect(self, ref: InstanceRef, database: str = "postgres") -> asyncpg.Connection:  # type: ignore[type-arg]
        conn: asyncpg.Connection = await asyncpg.connect(  # type: ignore[type-arg]
            host="127.0.0.1", port=ref.port, user="postgres", database=database, timeout=60
        )
        return conn


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers (a hung postmaster)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def row(node: str, port: int) -> InstanceRow:
    now = datetime.now(UTC)
    return InstanceRow(
        id=f"shop-{node}",
        database_id="shop",
        node_name=node,
        host_id="local",
        port=port,
        state="available",
        role="primary",
        desired="running",
        error=None,
        generations={},
        created_at=now,
        updated_at=now,
    )


class _Observer(InstanceObserver):
    def __init__(self, book: InstanceFactsBook, targets: list[InstanceRow]) -> None:
        services = Services(settings=None, pool=None, orchestrator=_Orchestrator(), secret_box=None)  # type: ignore[arg-type]
        super().__init__(services, book, timeout=1.0)
        self.targets = targets

    async def _targets(self) -> list[tuple[InstanceRow, str]]:
        return [(r, "app") for r in self.targets]


async def test_a_hung_instance_holds_up_nothing_but_its_own_facts(silent_port: int) -> None:
    """An instance that never answers is recorded down after the timeout; meanwhile another
    instance's facts are recorded at once, and later rounds do not pile up observations of
    the hung one."""
    book = InstanceFactsBook()
    observer = _Observer(book, [row("n1", silent_port), row("n2", closed_port())])
    began = time.monotonic()
    await observer.observe_round()
    await asyncio.sleep(0.3)
    refused = book.get("shop-n2")
    assert refused is not None and not refused.up and refused.error
    assert book.get("shop-n1") is None  # still waiting for the hung instance
    first = observer._inflight["shop-n1"]
    await observer.observe_round()
    assert observer._inflight["shop-n1"] is first
    await observer.wait()
    hung = book.get("shop-n1")
    assert hung is not None and not hung.up
    assert hung.error == "no answer within 1 s"
    assert time.monotonic() - began < 3
    observer.targets = observer.targets[1:]
    await observer.observe_round()
    await observer.close()
    assert [f.instance for f in book.snapshot()] == ["shop-n2"]
