"""GET /metrics: Prometheus text that parses, needs a read token and follows backups."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controlplane.client import AsyncClient
from controlplane.metrics import Family, render_metrics
from tests.support.api import create_and_wait, database_body
from tests.support.data import backup, posix, write_rows
from tests.support.server import ServerProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """(type of each family, value of each sample keyed by name and sorted labels)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


async def scrape(server: ServerProcess) -> tuple[dict[str, str], Samples]:
    async with AsyncClient(server.url, server.token) as client:
        return parse(await client.metrics())


def node(database: str, name: str = "n1") -> tuple[tuple[str, str], ...]:
    return (("database", database), ("node", name))


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


async def test_metrics_follow_backups_and_tasks(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """A node with a backup_config reports 0 until its first backup, then the stop time and
    duration of its newest set; task counts and queue gauges match the store."""
    database = await create_and_wait(
        api, database_body("metered", backup_config=posix(scratch_dir / "repo"))
    )
    await create_and_wait(api, database_body("nobackups"))
    types, before = await scrape(server)
    assert types["controlplane_backup_last_success_timestamp_seconds"] == "gauge"
    assert types["controlplane_tasks"] == "gauge"
    assert types["controlplane_task_queue_depth"] == "gauge"
    assert types["controlplane_scheduler_lag_seconds"] == "gauge"
    last = "controlplane_backup_last_success_timestamp_seconds"
    assert before[(last, node("metered"))] == 0
    assert (last, node("nobackups")) not in before
    created = (("status", "completed"), ("type", "create"))
    assert before[("controlplane_tasks", created)] == 2
    assert before[("controlplane_databases", (("state", "available"),))] == 2
    assert before[("controlplane_task_queue_depth", ())] == 0
    assert before[("controlplane_scheduler_lag_seconds", ())] == 0

    await write_rows(database, 1, 100)
    stamps = []
    for _ in range(2):
        task = await backup(api, "metered", "n1")
        _, after = await scrape(server)
        result = task["result"]
        assert after[(last, node("metered"))] == epoch(result["stopped_at"])
        duration = epoch(result["stopped_at"]) - epoch(result["started_at"])
        assert after[("controlplane_backup_last_duration_seconds", node("metered"))] == duration
        assert after[("controlplane_backup_last_size_bytes", node("metered"))] == result["size"]
        stamps.append(after[(last, node("metered"))])
    assert 0 < stamps[0] <= stamps[1]
    backups = (("status", "completed"), ("type", "node_backup"))
    assert after[("controlplane_tasks", backups)] == 2


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


def test_rendering_escapes_label_values_and_help() -> None:
    """Quotes, backslashes and newlines in labels and help survive a round trip through
    Prometheus' own parser; special floats use its spelling."""
    family = Family(name="x_seconds", type="gauge", help='a "help" line\nwith \\ two lines')
    family.add(1.5, database='we"ird\\na\nme', node="n1")
    family.add(float("inf"), database="inf", node="n1")
    text = render_metrics([family])
    [parsed] = text_string_to_metric_families(text)
    assert parsed.documentation == 'a "help" line\nwith \\ two lines'
    assert [s.labels["database"] for s in parsed.samples] == ['we"ird\\na\nme', "inf"]
    assert [s.value for s in parsed.samples] == [1.5, float("inf")]
    assert text.endswith("\n")
