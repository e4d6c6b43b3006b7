"""GET /metrics: Prometheus text that parses, needs a read token, follows backups, reports what
the monitor observes of every instance, and feeds the shipped alert rules."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from controlplane.client import AsyncClient
from controlplane.server.metrics import METRICS
from tests.support.api import create_and_wait, database_body, wait_task
from tests.support.data import backup, posix, write_rows
from tests.support.eventually import eventually
from tests.support.metrics import Samples, parse
from tests.support.server import ServerProcess

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


async def scrape(server: ServerProcess) -> tuple[dict[str, str], Samples]:
    async with AsyncClient(server.url, server.token) as client:
        return parse(await client.metrics())


def node(database: str, name: str = "n1", **more: str) -> tuple[tuple[str, str], ...]:
    """Sorted labels of a node's series (with `more` labels, e.g. type="full")."""
    return tuple(sorted({"database": database, "node": name, **more}.items()))


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


async def test_metrics_follow_backups_and_tasks(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """A node with a backup_config reports 0 for a full backup (and for every scheduled type)
    until its first one, then the stop time of its newest set of each type, its duration and
    size, and the start of its recovery window; task counts and queue gauges match the store."""
    config = posix(scratch_dir / "repo")
    config["schedules"] = [{"id": "hourly", "type": "incr", "cron_expression": "0 0 1 1 *"}]
    database = await create_and_wait(api, database_body("metered", backup_config=config))
    await create_and_wait(api, database_body("nobackups"))
    types, before = await scrape(server)
    assert types["controlplane_backup_last_success_timestamp_seconds"] == "gauge"
    assert types["controlplane_tasks"] == "gauge"
    assert types["controlplane_task_queue_depth"] == "gauge"
    assert types["controlplane_scheduler_lag_seconds"] == "gauge"
    last = "controlplane_backup_last_success_timestamp_seconds"
    failed = "controlplane_backup_last_failure_timestamp_seconds"
    window = "controlplane_recovery_window_start_timestamp_seconds"
    assert before[(last, node("metered", type="full"))] == 0
    assert before[(last, node("metered", type="incr"))] == 0
    assert (last, node("metered", type="diff")) not in before
    assert before[(failed, node("metered", type="full"))] == 0
    assert not [k for k in before if k[0] == last and dict(k[1])["database"] == "nobackups"]
    assert (window, node("metered")) not in before
    created = (("status", "completed"), ("type", "create"))
    assert before[("controlplane_tasks", created)] == 2
    assert before[("controlplane_databases", (("state", "available"),))] == 2
    assert before[("controlplane_task_queue_depth", ())] == 0
    assert before[("controlplane_scheduler_lag_seconds", ())] == 0

    await write_rows(database, 1, 100)
    stamps = []
    for kind in ("full", "full", "incr"):
        task = await backup(api, "metered", "n1", type=kind)
        _, after = await scrape(server)
        result = task["result"]
        assert result["type"] == kind
        assert after[(last, node("metered", type=kind))] == epoch(result["stopped_at"])
        duration = epoch(result["stopped_at"]) - epoch(result["started_at"])
        assert after[("controlplane_backup_last_duration_seconds", node("metered"))] == duration
        assert after[("controlplane_backup_last_size_bytes", node("metered"))] == result["size"]
        stamps.append((kind, epoch(result["stopped_at"])))
        await write_rows(database, 1000 * len(stamps), 10)
    assert after[(last, node("metered", type="full"))] == stamps[1][1]
    assert 0 < stamps[0][1] <= stamps[1][1] <= stamps[2][1]
    # The catalog's recovery window starts where the metric says (retention keeps all three).
    catalog = (await api.get("/v1/databases/metered/nodes/n1/backups")).json()
    assert after[(window, node("metered"))] == epoch(catalog["recovery_window"]["earliest"])
    assert after[(window, node("metered"))] == stamps[0][1]
    backups = (("status", "completed"), ("type", "node_backup"))
    assert after[("controlplane_tasks", backups)] == 3
    assert after[(failed, node("metered", type="full"))] == 0


async def test_metrics_need_a_read_token(server: ServerProcess) -> None:
    """Without a token the scrape is 401; a read token gets Prometheus text format 0.0.4."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        anonymous = await client.get("/metrics")
        assert anonymous.status_code == 401
        assert anonymous.json()["name"] == "unauthorized"
        token = await asyncio.to_thread(server.create_token, "prometheus", "read")
        scraped = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200
    assert scraped.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    types, samples = parse(scraped.text)
    assert types["controlplane_build_info"] == "gauge"
    assert samples[("controlplane_build_info", (("version", "0.1.0"),))] == 1
    assert "# HELP controlplane_tasks " in scraped.text
    # Exactly the declared families (the contract the dashboard and rules are checked against),
    # plus the process collector's.
    declared = {name.removesuffix("_total") for name in METRICS}
    assert {n for n in types if n.startswith("controlplane_")} == declared
    assert types["controlplane_archiver_failed"] == "counter"
    assert samples[("process_resident_memory_bytes", ())] > 0


def superuser_dsn(server: ServerProcess, instance: dict[str, Any]) -> dict[str, Any]:
    """Superuser access to an instance through its private socket directory (for checks)."""
    return {
        "host": str(server.run_dir / "i"),
        "port": instance["port"],
        "user": "postgres",
        "database": "app",
    }


def instance_of(database: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(i for i in database["instances"] if i["node_name"] == name)
    return found


async def superuser_query(server: ServerProcess, instance: dict[str, Any], sql: str) -> Any:
    conn = await asyncpg.connect(**superuser_dsn(server, instance))
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


def postmaster_pid(server: ServerProcess, instance_id: str) -> int:
    pid_file = server.data_dir / "instances" / instance_id / "pgdata" / "postmaster.pid"
    return int(pid_file.read_text().splitlines()[0])


@pytest.fixture
def stopped_processes() -> Iterator[list[int]]:
    """Processes a test SIGSTOPs: every one is SIGCONTinued at the end, whatever happens."""
    stopped: list[int] = []
    yield stopped
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def test_metrics_report_instances_slots_subscriptions_and_a_hung_node(
    server: ServerProcess, api: httpx.AsyncClient, stopped_processes: list[int]
) -> None:
    """Two meshed nodes are up on timeline 1, each replicating from the other, with one series
    per replication slot; when n2's postmaster hangs (SIGSTOP), scrapes stay fast, n2 turns
    down after the monitor's timeout while n1's facts stay fresh, and n2 comes back."""
    database = await create_and_wait(api, database_body("meshed", nodes=2))
    up = "controlplane_instance_up"
    age = "controlplane_instance_facts_age_seconds"

    def instance(name: str) -> tuple[tuple[str, str], ...]:
        return node("meshed", name, instance_id=f"meshed-{name}", role="primary")

    async def replicating() -> Any:
        _, samples = await scrape(server)
        subs = {
            (dict(k[1])["node"], dict(k[1])["provider"]): v
            for k, v in samples.items()
            if k[0] == "controlplane_subscription_up"
        }
        return samples if subs == {("n1", "n2"): 1, ("n2", "n1"): 1} else None

    samples = await eventually(replicating, timeout=60, what="both subscriptions replicating")
    for name in ("n1", "n2"):
        assert samples[(up, instance(name))] == 1
        assert samples[("controlplane_instance_timeline", instance(name))] == 1
        assert samples[(age, node("meshed", name))] < 10
        assert samples[("controlplane_wal_ready_files", node("meshed", name))] >= 0
        slots = {
            r["slot_name"]
            for r in await superuser_query(
                server, instance_of(database, name), "SELECT slot_name FROM pg_replication_slots"
            )
        }
        assert slots
        reported = {
            dict(k[1])["slot"]
            for k in samples
            if k[0] == "controlplane_replication_slot_retained_bytes" and dict(k[1])["node"] == name
        }
        assert reported == slots

    pid = postmaster_pid(server, "meshed-n2")
    os.kill(pid, signal.SIGSTOP)
    stopped_processes.append(pid)
    hung_at = time.monotonic()

    async def n2_down() -> Samples | None:
        began = time.monotonic()
        _, samples = await scrape(server)
        assert time.monotonic() - began < 2, "a scrape waited on the hung instance"
        return samples if samples[(up, instance("n2"))] == 0 else None

    samples = await eventually(n2_down, timeout=30, what="n2 reported down")
    # Not before the monitor's 5 s timeout; n1 was observed again meanwhile.
    assert time.monotonic() - hung_at >= 4
    assert samples[(up, instance("n1"))] == 1
    assert samples[(age, node("meshed", "n1"))] < 3
    os.kill(pid, signal.SIGCONT)

    async def n2_up() -> bool:
        _, samples = await scrape(server)
        return samples[(up, instance("n2"))] == 1

    await eventually(n2_up, timeout=30, what="n2 reported up again")


async def switch_wal(server: ServerProcess, database: dict[str, Any], rows: int) -> None:
    """Write a little and close the WAL segment, so that one more is ready to archive."""
    await write_rows(database, rows, 10)
    await superuser_query(server, instance_of(database, "n1"), "SELECT pg_switch_wal()")


def promtool_case(scrapes: list[Samples], database: str, alert: str) -> dict[str, Any]:
    """A promtool test of `alert` over the archiver series of node n1 as scraped, one scrape per
    minute and the last one held for 20 minutes: quiet on the first (healthy) scrape and
    before `for` elapses, firing at the end, annotations rendered for n1."""
    names = [
        "controlplane_archiver_archived_total",
        "controlplane_archiver_failed_total",
        "controlplane_archiver_last_archived_timestamp_seconds",
        "controlplane_archiver_last_failed_timestamp_seconds",
        "controlplane_wal_ready_files",
    ]
    series = []
    for name in names:
        values = [repr(float(s[(name, node(database))])) for s in scrapes]
        values += [values[-1]] * 20
        series.append(
            {"series": f'{name}{{database="{database}",node="n1"}}', "values": " ".join(values)}
        )
    rule = next(
        r
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for r in group["rules"]
        if r["alert"] == alert
    )
    labels = {"database": database, "node": "n1", **rule["labels"]}

    def render(text: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)

    firing = {
        "exp_labels": labels,
        "exp_annotations": {k: render(v) for k, v in rule["annotations"].items()},
    }
    return {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "0m", "alertname": alert, "exp_alerts": []},
                    {"eval_time": "3m", "alertname": alert, "exp_alerts": []},
                    {"eval_time": "15m", "alertname": alert, "exp_alerts": [firing]},
                ],
            }
        ],
    }


async def test_failing_archiving_shows_in_metrics_and_fires_the_alert(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """With its posix repository made unwritable, a node's failed archive count rises, WAL
    waits in .ready files and a backup fails; those scraped series make promtool fire
    ControlplaneArchivingFailing. Writable again, the node archives its backlog."""
    repo = scratch_dir / "repo"
    database = await create_and_wait(api, database_body("unarchived", backup_config=posix(repo)))
    archiver = node("unarchived")
    archived = "controlplane_archiver_archived_total"
    failed = "controlplane_archiver_failed_total"
    ready = "controlplane_wal_ready_files"
    last_archived = "controlplane_archiver_last_archived_timestamp_seconds"
    last_failed = "controlplane_archiver_last_failed_timestamp_seconds"

    async def scraped_when(condition: Any, what: str) -> Samples:
        async def probe() -> Samples | None:
            _, samples = await scrape(server)
            return samples if (archived, archiver) in samples and condition(samples) else None

        return await eventually(probe, timeout=90, what=what)

    await switch_wal(server, database, 1)
    healthy = await scraped_when(
        lambda s: s[(archived, archiver)] > 0 and s[(ready, archiver)] == 0,
        "every switched segment archived",
    )
    assert healthy[(failed, archiver)] == 0
    assert healthy[(last_archived, archiver)] > 0

    mode = repo.stat().st_mode & 0o7777
    repo.chmod(0o000)  # pgBackRest runs as the postgres OS user: it can no longer enter it
    try:
        await switch_wal(server, database, 100)
        first = await scraped_when(
            lambda s: s[(failed, archiver)] > 0 and s[(ready, archiver)] > 0,
            "archiving to fail with WAL waiting",
        )
        await switch_wal(server, database, 200)
        second = await scraped_when(
            lambda s: s[(failed, archiver)] > first[(failed, archiver)],
            "the failed count to rise",
        )
        assert second[(ready, archiver)] >= 1
        assert second[(last_failed, archiver)] > second[(last_archived, archiver)]
        # Once failing, nothing more reaches the repository (a segment already on its way
        # when the repository closed may still have been counted before `first`).
        assert second[(archived, archiver)] == first[(archived, archiver)]

        response = await api.post("/v1/databases/unarchived/nodes/n1/backups", json={})
        task = await wait_task(api, "unarchived", response.json()["task"]["task_id"], timeout=300)
        assert task["status"] == "failed"
        _, after = await scrape(server)
        ended = "controlplane_backup_last_failure_timestamp_seconds"
        assert after[(ended, node("unarchived", type="full"))] == epoch(task["completed_at"])

        if shutil.which("promtool") is not None:
            case = promtool_case(
                [healthy, first, second], "unarchived", "ControlplaneArchivingFailing"
            )
            path = scratch_dir / "archiving_test.yml"
            path.write_text(json.dumps(case, indent=2))  # JSON is YAML
            tested = await asyncio.to_thread(
                subprocess.run,
                ["promtool", "test", "rules", str(path)],
                capture_output=True,
                text=True,
            )
            assert tested.returncode == 0, tested.stdout + tested.stderr
    finally:
        repo.chmod(mode)

    await switch_wal(server, database, 300)
    await scraped_when(
        lambda s: (
            s[(last_archived, archiver)] > s[(last_failed, archiver)] and s[(ready, archiver)] == 0
        ),
        "the backlog archived once the repository is writable again",
    )
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed: the alert was not evaluated (Debian `prometheus`)")
