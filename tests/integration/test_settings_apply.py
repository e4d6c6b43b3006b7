"""Settings and repositories against a real server: values refused up front change nothing,
values the server refuses later are undone, a failed create stops what it started, and one
repository that is down does not stop backups to another."""

from __future__ import annotations

import asyncio
import copy
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from controlplane.settings import Settings
from controlplane.spec.pg_settings import load_setting_rules, run_config_probe, value_problem
from tests.support.api import create_and_wait, database_body, full_log, wait_task
from tests.support.data import CHECKSUM, backup, checksum, posix_repository, query, write_rows
from tests.support.processes import postmasters_under
from tests.support.restore_check import restore_and_query
from tests.support.server import ServerProcess

# Values whose fate the pure checks must predict exactly as the server decides it.
SAMPLES: list[tuple[str, str]] = [
    *(("shared_buffers", "999TB"), ("shared_buffers", "7TB"), ("shared_buffers", "8TB")),
    *(("shared_buffers", "15"), ("shared_buffers", "1GB "), ("work_mem", "4mb")),
    *(("work_mem", "1.5MB"), ("work_mem", "0x40"), ("work_mem", "63")),
    *(("max_connections", "010"), ("max_connections", "1e2"), ("max_connections", "1e10")),
    *(("max_connections", "100MB"), ("max_connections", "abc"), ("max_connections", "0")),
    *(("checkpoint_timeout", "29s"), ("checkpoint_timeout", "5mins"), ("checkpoint_timeout", "1d")),
    *(
        ("checkpoint_timeout", "0.5min"),
        ("vacuum_cost_delay", "500us"),
        ("vacuum_cost_delay", "1s"),
    ),
    *(("vacuum_cost_delay", "100ms"), ("seq_page_cost", "-1"), ("seq_page_cost", "inf")),
    *(("seq_page_cost", "1e308"), ("seq_page_cost", "nan"), ("jit_above_cost", "1e400")),
    *(("huge_pages", "maybe"), ("huge_pages", "true"), ("huge_pages", "TRY")),
    *(("huge_pages", "1"), ("ssl", "of"), ("ssl", "o"), ("jit", "tru"), ("jit", "2")),
    *(("log_min_duration_statement", "-2"), ("statement_timeout", "1.5s")),
    *(("statement_timeout", "500us"), ("max_wal_size", "1GB"), ("max_wal_size", "1kB")),
    *(("wal_buffers", "-1"), ("wal_buffers", "-2"), ("wal_compression", "yes please")),
    *(("wal_compression", "zstd"), ("synchronous_commit", "remote_apply")),
    *(("log_rotation_size", "10MB"), ("autovacuum_naptime", "0")),
    *(("random_page_cost", "1.1"), ("geqo_selection_bias", "2.5"), ("temp_file_limit", "-1")),
]
_REFUSED_NAME = re.compile(r'parameter "([^"]+)"')


def _rounds(samples: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Split the samples so that no setting appears twice in one configuration file."""
    rounds: list[list[tuple[str, str]]] = []
    for name, value in samples:
        target = next((r for r in rounds if all(n != name for n, _ in r)), None)
        if target is None:
            target = []
            rounds.append(target)
        target.append((name, value))
    return rounds


async def test_rules_agree_with_the_server() -> None:
    """For every sample value, the pure check refuses it exactly when the installed server
    does (asked by starting it on a configuration holding the value)."""
    settings = Settings()
    rules = await load_setting_rules(settings)
    assert rules is not None and len(rules) > 300
    for samples in _rounds(SAMPLES):
        lines = [f"{name} = '{value}'" for name, value in samples]
        # One value it surely refuses, so that it stops at the configuration every time.
        lines.append("archive_mode = 'cp-sentinel'")
        log = await run_config_probe(settings, "\n".join(lines) + "\n")
        refused = {
            match.group(1).lower()
            for line in log.splitlines()
            if " LOG: " in line and (match := _REFUSED_NAME.search(line))
        }
        for name, value in samples:
            rule = rules.get(name)
            assert rule is not None, name
            predicted = value_problem(rule, value) is not None
            assert predicted == (name.lower() in refused), (name, value, log)


Mutation = Callable[[dict[str, Any]], None]


def _conf(**conf: Any) -> Mutation:
    def apply(body: dict[str, Any]) -> None:
        body["spec"]["postgresql_conf"] = {**body["spec"].get("postgresql_conf", {}), **conf}

    return apply


def _spec(**fields: Any) -> Mutation:
    def apply(body: dict[str, Any]) -> None:
        body["spec"].update(fields)

    return apply


REFUSED_UPDATES: list[tuple[Mutation, str]] = [
    (_conf(shared_buffers="999TB"), "spec.postgresql_conf.shared_buffers"),
    (_conf(shared_bufers="1GB"), "spec.postgresql_conf.shared_bufers"),
    (_conf(port=2), "spec.postgresql_conf.port"),
    (_spec(port=2), "spec.port"),
    (_conf(log_directory="/etc"), "spec.postgresql_conf.log_directory"),
    (_conf(ssl="on"), "spec.postgresql_conf.ssl"),
    (_conf(max_wal_senders=0), "spec.postgresql_conf.max_wal_senders"),
    (_conf(archive_command="cp %p /tmp"), "spec.postgresql_conf.archive_command"),
    (_spec(database_name="template1"), "spec.database_name"),
    (
        _spec(
            backup_config={
                "repositories": [
                    posix_repository("/var/backups", custom_options={"repo1-path": "/x"})
                ]
            }
        ),
        "spec.backup_config.repositories[0].custom_options.repo1-path",
    ),
]


async def test_refused_updates_change_nothing(api: httpx.AsyncClient) -> None:
    """Every bad value in an update is a 422 naming its path; no task starts and the node
    keeps its settings and its rows."""
    body = database_body("keep", postgresql_conf={"work_mem": "8MB"})
    database = await create_and_wait(api, body)
    await write_rows(database, 1, 300)
    before = await checksum(database)
    tasks = (await api.get("/v1/databases/keep/tasks")).json()["tasks"]
    for mutation, path in REFUSED_UPDATES:
        bad = copy.deepcopy(body)
        mutation(bad)
        response = await api.post("/v1/databases/keep", json=bad)
        assert response.status_code == 422, (path, response.text)
        assert path in [e["path"] for e in response.json()["details"]["errors"]], response.text
    current = (await api.get("/v1/databases/keep")).json()
    assert current["state"] == "available"
    assert current["spec"]["postgresql_conf"] == {"work_mem": "8MB"}
    assert current["spec"]["database_name"] == "app"
    assert (await api.get("/v1/databases/keep/tasks")).json()["tasks"] == tasks
    assert await query(database, "n1", "SHOW work_mem") == "8MB"
    assert await checksum(database) == before


async def _failed_update(api: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.post(f"/v1/databases/{body['id']}", json=body)
    assert response.status_code == 202, response.text
    task = await wait_task(api, body["id"], response.json()["task"]["task_id"], timeout=300)
    assert task["status"] == "failed", task
    return task


async def test_setting_refused_on_reload_is_undone(api: httpx.AsyncClient) -> None:
    """A value only the running server can judge (an unknown time zone) fails the update
    naming it, and the node runs on, with its previous settings and its rows."""
    body = database_body("reload", postgresql_conf={"work_mem": "8MB"})
    database = await create_and_wait(api, body)
    await write_rows(database, 1, 300)
    before = await checksum(database)
    body["spec"]["postgresql_conf"] = {"work_mem": "16MB", "timezone": "Mars/Olympus"}
    task = await _failed_update(api, body)
    assert "timezone = 'Mars/Olympus'" in task["error"], task["error"]
    assert "previous configuration was put back and the node runs on it" in task["error"]
    current = (await api.get("/v1/databases/reload")).json()
    assert current["state"] == "available"
    assert [i["state"] for i in current["instances"]] == ["available"]
    assert await query(database, "n1", "SHOW work_mem") == "8MB"
    assert await query(database, "n1", "SHOW timezone") != "Mars/Olympus"
    assert await checksum(database) == before
    await write_rows(database, 301, 10)
    assert (await checksum(database)).startswith("310:")


async def test_setting_failing_at_restart_is_undone(api: httpx.AsyncClient) -> None:
    """A value that passes every static rule but stops the server from starting
    (max_connections not above superuser_reserved_connections) fails the update naming it;
    the node is started again on its previous settings, with its rows."""
    body = database_body("restart", postgresql_conf={"work_mem": "8MB"})
    database = await create_and_wait(api, body)
    await write_rows(database, 1, 300)
    before = await checksum(database)
    body["spec"]["postgresql_conf"] = {"work_mem": "8MB", "max_connections": 3}
    task = await _failed_update(api, body)
    assert "did not start with the new max_connections" in task["error"], task["error"]
    assert "previous configuration was put back and the node runs on it" in task["error"]
    current = (await api.get("/v1/databases/restart")).json()
    assert current["state"] == "available"
    assert await query(database, "n1", "SHOW max_connections") == "100"
    assert await checksum(database) == before


async def test_failed_create_leaves_nothing_running(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    """A create whose nodes cannot start fails, shows its instances stopped or failed and the
    database failed, and no postmaster of it runs, then or after the monitor's sweeps."""
    body = database_body("dead", nodes=2, postgresql_conf={"max_connections": 3})
    response = await api.post("/v1/databases", json=body)
    assert response.status_code == 202, response.text
    task = await wait_task(api, "dead", response.json()["task"]["task_id"], timeout=300)
    assert task["status"] == "failed", task
    database = (await api.get("/v1/databases/dead")).json()
    assert database["state"] == "failed"
    assert database["error"] == task["error"]
    assert {i["state"] for i in database["instances"]} <= {"stopped", "failed"}
    assert len(database["instances"]) == 2
    instances = server.data_dir / "instances"
    assert postmasters_under(instances) == []
    # The monitor sweeps every second here: over several sweeps nothing is started again.
    for _ in range(8):
        await asyncio.sleep(0.5)
        assert postmasters_under(instances) == []
    assert (await api.get("/v1/databases/dead")).json()["state"] == "failed"


def _statuses(catalog: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["repository_id"]: s for s in catalog["repository_status"]}


async def test_backup_to_a_healthy_repository_while_another_is_down(
    api: httpx.AsyncClient, server: ServerProcess, scratch_dir: Path
) -> None:
    """With one of two repositories unreadable, backups to the other succeed (even when its
    stanza must be created again), the catalog lists its sets and shows the other degraded,
    and once the repository is back its sets are listed again."""
    near, far = scratch_dir / "near", scratch_dir / "far"
    config = {"repositories": [posix_repository(near, id="near"), posix_repository(far, id="far")]}
    database = await create_and_wait(api, database_body("tworepo", backup_config=config))
    await write_rows(database, 1, 500)
    await backup(api, "tworepo", repository_id="near")
    far_set = (await backup(api, "tworepo", repository_id="far"))["result"]["label"]
    catalog_url = "/v1/databases/tworepo/nodes/n1/backups"
    far.chmod(0o000)  # pgBackRest runs as the postgres OS user: it can no longer enter it
    try:
        catalog = (await api.get(catalog_url)).json()
        assert _statuses(catalog)["near"] == {
            "repository_id": "near",
            "status": "ok",
            "message": None,
        }
        assert _statuses(catalog)["far"]["status"] == "degraded"
        assert "Permission denied" in _statuses(catalog)["far"]["message"]
        assert {s["repository_id"] for s in catalog["backups"]} == {"near"}

        await write_rows(database, 501, 500)
        incr = (await backup(api, "tworepo", repository_id="near", type="incr"))["result"]
        incr_rows = await checksum(database)

        # near loses its stanza: the backup creates it again there alone.
        shutil.rmtree(near / "databases")
        await write_rows(database, 1001, 500)
        full = (await backup(api, "tworepo", repository_id="near"))["result"]
        full_rows = await checksum(database)
        catalog = (await api.get(catalog_url)).json()
        assert [s["label"] for s in catalog["backups"]] == [full["label"]]
        assert _statuses(catalog)["far"]["status"] == "degraded"

        response = await api.post(catalog_url, json={"repository_id": "far"})
        assert response.status_code == 202, response.text
        task = await wait_task(api, "tworepo", response.json()["task"]["task_id"], timeout=300)
        assert task["status"] == "failed"
        assert "Permission denied" in task["error"], task["error"]

        # verify checks near's sets and fails naming far.
        verify = await _verify(api)
        assert verify["status"] == "failed"
        assert "far" in verify["error"] and "near" not in verify["error"], verify["error"]
        log = [e["message"] for e in await full_log(api, "tworepo", verify["task_id"])]
        assert any("verify: 1 set(s) checked" in line for line in log), log
    finally:
        far.chmod(0o755)
    assert incr["repository_id"] == "near" and incr["type"] == "incr"
    catalog = (await api.get(catalog_url)).json()
    assert {s["status"] for s in catalog["repository_status"]} == {"ok"}
    assert [(s["repository_id"], s["label"]) for s in catalog["backups"]] == [
        ("far", far_set),
        ("near", full["label"]),
    ]
    # near's set restores (through the file that names near alone) to exactly its rows.
    config_path = str(server.data_dir / "instances" / "tworepo-n1" / "pgbackrest.repo1.conf")
    restored = await asyncio.to_thread(
        restore_and_query, config_path, full["label"], CHECKSUM, scratch_dir
    )
    assert restored == full_rows != incr_rows
    verify = await _verify(api)
    assert verify["status"] == "completed", verify["error"]
    assert verify["result"]["repositories"] == {"near": "ok", "far": "ok"}
    checked = {(s["repository_id"], s["label"]) for s in verify["result"]["sets"]}
    assert checked == {("far", far_set), ("near", full["label"])}


async def _verify(api: httpx.AsyncClient) -> dict[str, Any]:
    response = await api.post("/v1/databases/tworepo/nodes/n1/backups/verify")
    assert response.status_code == 202, response.text
    return await wait_task(api, "tworepo", response.json()["task"]["task_id"], timeout=300)


async def test_catalog_of_two_healthy_repositories(
    api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """With every repository readable, the catalog reports each ok and lists every set."""
    config = {
        "repositories": [
            posix_repository(scratch_dir / "a", id="near"),
            posix_repository(scratch_dir / "b", id="far"),
        ]
    }
    await create_and_wait(api, database_body("healthy", backup_config=config))
    first = (await backup(api, "healthy", repository_id="far"))["result"]["label"]
    second = (await backup(api, "healthy"))["result"]["label"]
    catalog = (await api.get("/v1/databases/healthy/nodes/n1/backups")).json()
    assert [(s["repository_id"], s["label"]) for s in catalog["backups"]] == [
        ("far", first),
        ("near", second),
    ]
    assert catalog["repositories"] == ["near", "far"]
    assert [(s["repository_id"], s["status"]) for s in catalog["repository_status"]] == [
        ("near", "ok"),
        ("far", "ok"),
    ]
