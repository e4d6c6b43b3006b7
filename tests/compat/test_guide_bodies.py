"""pgEdge Control Plane's "Backup and Restore" guide, request body by request body.

Each body in `guide_bodies/` is the guide's text, verbatim but for its trailing commas (JSON
has none). It is posted to the path the guide names, with an admin token (the guide's users are
SUPERUSER), and mapped to this machine only where the guide names places: its hosts
`host-1`…`host-4` are named local hosts, its port 5432 stays 5432 (each host has its own
address) unless something here listens on it, and its S3 bucket lives in a TLS S3 server on
localhost (`localize`). Then what the guide says happens is checked on data.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.pgbackrest.config import (
    InstanceLayout,
    plan_repositories,
    render_config,
    secret_env,
)
from controlplane.settings import Settings
from controlplane.spec import parse_database_request
from controlplane.spec.models import BackupConfig
from controlplane.spec.secrets import SecretBox
from tests.support.api import connect, full_log, wait_task
from tests.support.data import TABLE, nodes_of, write_rows
from tests.support.eventually import eventually
from tests.support.load import assert_between, assert_holds, ids_on, mark, settle, writers
from tests.support.object_storage import ObjectStorage, missing_requirements, start_s3
from tests.support.os_user import give_to_os_user
from tests.support.pgcluster import bind_succeeds
from tests.support.server import ServerProcess, serving

pytestmark = pytest.mark.skipif(
    bool(missing_requirements(("s3",))),
    reason=f"S3 test server not installed: {missing_requirements(('s3',))}",
)

BODIES = Path(__file__).parent / "guide_bodies"
BUCKET = "backups-9f81786f-373b-4ff2-afee-e054a06a96f1"
GUIDE_KEY = "AKIAIOSFODNN7EXAMPLE"
GUIDE_PORT = 5432
HOSTS = ("host-1", "host-2", "host-3", "host-4")
ADDRESSES = tuple(f"127.0.1.{i}" for i in range(1, len(HOSTS) + 1))
# The guide's users have no password: the database is created with one first (the guide
# starts from an existing database), and the guide's updates keep it (it is write-only).
PASSWORD = "s3cret-pass"


def guide_body(name: str) -> dict[str, Any]:
    """One of the guide's bodies, as it is in the guide."""
    body: dict[str, Any] = json.loads((BODIES / f"{name}.json").read_text())
    return body


@dataclass
class Guide:
    """The machine the guide's names are mapped to: one server, one S3 server."""

    server: ServerProcess
    s3: ObjectStorage
    port: int  # where the guide's 5432 goes
    second_port: int  # for a second database on the same hosts

    def localize(self, value: Any, port: int | None = None) -> Any:
        """`value` with each S3 repository pointed at the S3 server here (the guide's bucket
        at AWS's endpoint is this server's bucket at localhost) and port 5432 mapped."""
        if isinstance(value, list):
            return [self.localize(v, port) for v in value]
        if not isinstance(value, dict):
            return value
        mapped = {k: self.localize(v, port) for k, v in value.items()}
        if mapped.get("port") == GUIDE_PORT:
            mapped["port"] = port or self.port
        if mapped.get("type") == "s3" and mapped.get("s3_bucket") == BUCKET:
            mapped |= {
                "s3_endpoint": self.s3.endpoint,
                "s3_uri_style": "path",
                "storage_port": self.s3.port,
                "storage_ca_file": str(self.s3.ca_file),
            }
        return mapped

    def instance_dir(self, node: str, database_id: str = "example") -> Path:
        host = HOSTS[int(node[1:]) - 1]
        return self.server.data_dir / "hosts" / host / f"{database_id}-{node}"

    def config(self, node: str, database_id: str = "example") -> str:
        """The pgbackrest.conf rendered for a node's instance."""
        return (self.instance_dir(node, database_id) / "pgbackrest.conf").read_text()

    def secret_env(self, node: str, database_id: str = "example") -> dict[str, str]:
        """The repository secrets the node's Postgres (archive_command) and pgBackRest get."""
        box = SecretBox.for_settings(Settings(data_dir=self.server.data_dir))
        sealed = (self.instance_dir(node, database_id) / "postmaster.env").read_text()
        env: dict[str, str] = box.decrypt(sealed.strip())
        return env

    def objects(self, prefix: str = "") -> list[str]:
        """The keys in the guide's bucket."""
        import boto3  # type: ignore[import-untyped]

        client = boto3.client(
            "s3",
            endpoint_url=self.s3.url,
            region_name=self.s3.region,
            aws_access_key_id=self.s3.key,
            aws_secret_access_key=self.s3.key_secret,
            verify=str(self.s3.ca_file),
        )
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys


def ports_for_every_host() -> tuple[int, int]:
    """Two ports free on every host's address: 5432 first, as in the guide, when it is."""
    candidates = [GUIDE_PORT]
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((ADDRESSES[0], 0))
            candidates.append(int(probe.getsockname()[1]))
    free = [
        port
        for port in candidates
        if all(bind_succeeds(address, port) for address in (*ADDRESSES, "0.0.0.0"))
    ]
    assert len(free) >= 2, "no two ports free on every host address"
    return free[0], free[1]


@pytest.fixture(scope="module")
def guide() -> Iterator[Guide]:
    """A server with the guide's four hosts (SUPERUSER allowed: one tenant) and an S3 server
    holding the guide's bucket."""
    root = Path(tempfile.mkdtemp(prefix="cpg-", dir="/tmp"))
    give_to_os_user(root)
    s3 = start_s3(root / "s3", bucket=BUCKET)
    env = {
        "CONTROLPLANE_LOCAL_HOSTS": ",".join(HOSTS),
        "CONTROLPLANE_LOCAL_SUPERUSER": "true",
    }
    try:
        with serving(root / "cp", database_url=None, env=env) as server:
            port, second_port = ports_for_every_host()
            yield Guide(server=server, s3=s3, port=port, second_port=second_port)
    finally:
        s3.cleanup()
        shutil.rmtree(root, ignore_errors=True)


async def accepted(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` to `path`: answered 202; the answer."""
    response = await api.post(path, json=body)
    assert response.status_code == 202, f"{path}: {response.status_code} {response.text}"
    answer: dict[str, Any] = response.json()
    return answer


async def completed(api: httpx.AsyncClient, database_id: str, answer: dict[str, Any]) -> None:
    task = await wait_task(api, database_id, answer["task"]["task_id"], timeout=300)
    assert task["status"] == "completed", task["error"]


async def view(api: httpx.AsyncClient, database_id: str = "example") -> dict[str, Any]:
    response = await api.get(f"/v1/databases/{database_id}")
    assert response.status_code == 200, response.text
    database: dict[str, Any] = response.json()
    return database


async def fetch(database: dict[str, Any], node: str, sql: str, password: str = PASSWORD) -> Any:
    conn = await connect(database, node, password=password)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def catalog(api: httpx.AsyncClient, node: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/databases/example/nodes/{node}/backups")
    assert response.status_code == 200, response.text
    backups: list[dict[str, Any]] = response.json()["backups"]
    return backups


def guide_time(target: str) -> str:
    """A timestamp in the guide's form (`2025-05-05 09:38:52-04`), to the microsecond."""
    moment = datetime.fromisoformat(target).astimezone(timezone(timedelta(hours=-4)))
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f-04")


async def test_nfs_body_is_refused_with_its_reason(guide: Guide) -> None:
    """The NFS recipe mounts a share into the node's container: with no container here the
    422 names orchestrator_opts.swarm.extra_volumes and says why (not "unknown field"), and
    nothing is created."""
    body = guide.localize(guide_body("02_backup_config_nfs"))
    async with guide.server.client() as api:
        for path, sent in (
            ("/v1/databases/example", body),  # the guide's request: an update
            ("/v1/databases", {"id": "example", **body}),  # or the same spec in a create
        ):
            response = await api.post(path, json=sent)
            assert response.status_code == 422, response.text
            errors = {e["path"]: e["message"] for e in response.json()["details"]["errors"]}
            reason = errors["spec.nodes[0].orchestrator_opts.swarm.extra_volumes"]
            assert "unknown" not in reason
            assert "container" in reason or "docker" in reason, reason
        assert (await api.get("/v1/databases/example")).status_code == 404


async def test_guide_bodies_in_order(guide: Guide) -> None:
    """The guide's S3 bodies on one database, each accepted and doing what the guide says (see
    each step); the keyless ones are refused with pgBackRest's credential error first."""
    async with guide.server.client(timeout=60) as api:
        database = await create_example(api, guide)
        await s3_backup_config(api, guide)
        await full_backup(api, guide)
        await schedules(api, guide)
        # The guide's "from a backup" sections come before its restores here: they read n1's
        # backup, which the restores replace.
        await add_node_from_backup(api, guide)
        await create_from_backup(api, guide)
        database = await view(api)
        await restore_n1_from_n3(api, guide, database)
        await restore_all_to_time(api, guide, database)


async def create_example(api: httpx.AsyncClient, guide: Guide) -> dict[str, Any]:
    """The database the guide starts from: its users, port and nodes, no backups yet."""
    spec = guide.localize(guide_body("01_backup_config_s3"))["spec"]
    del spec["backup_config"]
    spec["database_users"][0]["password"] = PASSWORD
    answer = await accepted(api, "/v1/databases", {"id": "example", "spec": spec})
    await completed(api, "example", answer)
    database = await view(api)
    assert {
        i["node_name"]: (i["host_id"], i["connection_info"]["host"], i["connection_info"]["port"])
        for i in database["instances"]
    } == {f"n{i}": (HOSTS[i - 1], ADDRESSES[i - 1], guide.port) for i in (1, 2, 3)}
    for node in nodes_of(database):
        await fetch(database, node, TABLE)
    await write_rows(database, 1, 100, node="n1")
    return database


async def s3_backup_config(api: httpx.AsyncClient, guide: Guide) -> None:
    """Body 1: every node backs up to the S3 bucket with the guide's keys; the keys are in
    each node's pgBackRest environment, never in its config file or in an answer."""
    body = guide.localize(guide_body("01_backup_config_s3"))
    answer = await accepted(api, "/v1/databases/example", body)
    await completed(api, "example", answer)
    assert GUIDE_KEY not in json.dumps(await view(api))
    for node in ("n1", "n2", "n3"):
        config = guide.config(node)
        assert f"repo1-s3-bucket={BUCKET}" in config
        assert "repo1-s3-region=us-east-1" in config
        assert "s3-key" not in config  # neither a key nor key-type=auto
        assert guide.secret_env(node)["PGBACKREST_REPO1_S3_KEY"] == GUIDE_KEY
    # The stanza of each node is in the bucket.
    keys = guide.objects()
    for node in ("n1", "n2", "n3"):
        assert [k for k in keys if f"/{node}/" in k and k.endswith("archive.info")], keys


async def full_backup(api: httpx.AsyncClient, guide: Guide) -> None:
    """Body 3: a full backup of n1, asynchronous (a task), listed in n1's catalog and stored
    in the bucket."""
    answer = await accepted(
        api, "/v1/databases/example/nodes/n1/backups", guide_body("03_backup_full")
    )
    await completed(api, "example", answer)
    backups = await catalog(api, "n1")
    assert [(b["type"], b["task_id"]) for b in backups] == [("full", answer["task"]["task_id"])]
    label = backups[0]["label"]
    assert [k for k in guide.objects() if "/n1/" in k and f"/{label}/" in k]


async def schedules(api: httpx.AsyncClient, guide: Guide) -> None:
    """Body 4: a nightly full and an hourly incremental backup on every node, due at the
    next midnight and the next hour (UTC). The body names the bucket without keys: the
    keys already given for that same bucket are kept, so backups keep working."""
    answer = await accepted(
        api, "/v1/databases/example", guide.localize(guide_body("04_schedules"))
    )
    await completed(api, "example", answer)
    response = await api.get("/v1/databases/example/schedules")
    assert response.status_code == 200, response.text
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    found = {
        (s["node_name"], s["schedule_id"], s["type"], datetime.fromisoformat(s["next_run_at"]))
        for s in response.json()["schedules"]
    }
    assert found == {
        (node, schedule, kind, due)
        for node in ("n1", "n2", "n3")
        for schedule, kind, due in (
            ("nightly-full-backup", "full", midnight),
            ("hourly-incremental", "incr", hour),
        )
    }
    for node in ("n1", "n2", "n3"):
        assert "s3-key" not in guide.config(node)
        assert guide.secret_env(node)["PGBACKREST_REPO1_S3_KEY"] == GUIDE_KEY
    # The source of the guide's restores: a full backup of n3 (body 3's body, on n3).
    answer = await accepted(
        api, "/v1/databases/example/nodes/n3/backups", guide_body("03_backup_full")
    )
    await completed(api, "example", answer)


async def restore_n1_from_n3(
    api: httpx.AsyncClient, guide: Guide, database: dict[str, Any]
) -> None:
    """Body 5: n1 is restored in place from n3's latest backup while n2 and n3 write: n1 now
    holds n3's data (its system identifier, not a table only n1 had), the nodes converge with
    every committed row, and n1 writes to the others again."""
    await fetch(database, "n1", "CREATE TABLE only_n1 (id int)")
    source_id = await fetch(database, "n3", "SELECT system_identifier FROM pg_control_system()")
    before = await fetch(database, "n1", "SELECT system_identifier FROM pg_control_system()")
    assert before != source_id
    async with writers(database, ["n2", "n3"]) as load:
        await load.progress()
        answer = await accepted(
            api,
            "/v1/databases/example/restore",
            guide.localize(guide_body("05_restore_n1_from_n3")),
        )
        assert [t["node_name"] for t in answer["node_tasks"]] == ["n1"]
        await completed(api, "example", answer)
        await load.progress()
    assert await fetch(database, "n1", "SELECT system_identifier FROM pg_control_system()") == (
        source_id
    )
    assert await fetch(database, "n1", "SELECT to_regclass('only_n1') IS NULL")
    await write_rows(database, 1001, 10, node="n1")
    await settle(database)
    await assert_holds(database, load.committed() | set(range(1, 101)) | set(range(1001, 1011)))
    assert (await view(api))["state"] == "available"


async def restore_all_to_time(
    api: httpx.AsyncClient, guide: Guide, database: dict[str, Any]
) -> None:
    """Body 6: every node is restored to a time read on n3 while every node wrote, from n3's
    full backup set: each node holds exactly the rows n3 had then, they replicate again, and
    n1 (restored from n3 twice now) backs up again with no manual step."""
    label = next(b["label"] for b in await catalog(api, "n3") if b["type"] == "full")
    async with writers(database) as load:
        await load.progress()
        point = await mark(database, "n3")
        await load.progress()
    body = guide.localize(guide_body("06_restore_all_to_time"))
    options = body["restore_config"]["restore_options"]
    assert (options["set"], options["type"]) == ("20250505-133723F", "time")
    # The guide's set and time are its own run's: ours are n3's full set and the mark.
    options |= {"set": label, "target": guide_time(point.target)}
    answer = await accepted(api, "/v1/databases/example/restore", body)
    assert sorted(t["node_name"] for t in answer["node_tasks"]) == nodes_of(database)
    await completed(api, "example", answer)
    for node in nodes_of(database):
        found = await ids_on(database, node)
        assert_between(found, set(point.at_least), set(point.at_most), f"{node} after the restore")
    await write_rows(database, 2001, 10, node="n2")
    await settle(database)
    assert (await view(api))["state"] == "available"
    stuck = [
        problem for node in nodes_of(database) if (problem := await not_archiving(database, node))
    ]
    assert not stuck, "; ".join(stuck)


async def not_archiving(database: dict[str, Any], node: str) -> str | None:
    """None when the node's WAL reaches its repository (a segment it closes now is archived:
    the archiver works through segments in order, so its backups and time targets are
    whole); else what its archiver reports."""
    conn = await connect(database, node, password=PASSWORD)
    try:
        segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")

        async def archived() -> bool:
            row = await conn.fetchrow("SELECT * FROM pg_stat_archiver")
            assert row is not None
            assert (row["last_archived_wal"] or "") >= segment, f"{node}: {dict(row)}"
            return True

        await eventually(archived, timeout=60, what=f"{node} to archive {segment}")
    except AssertionError as exc:
        return str(exc)
    finally:
        await conn.close()
    return None


def keyless_refusal(response: httpx.Response, path: str) -> str:
    """A body naming the bucket without keys, where no keys are stored for it, is refused at
    `path` with pgBackRest's own error: it asked the EC2 instance metadata service for the
    instance profile's credentials (key-type=auto), which this machine does not have. Not a
    missing option: nothing was asked of the request that the guide did not give."""
    assert response.status_code == 422, response.text
    errors = {e["path"]: e["message"] for e in response.json()["details"]["errors"]}
    assert list(errors) == [path], errors
    message = str(errors[path])
    assert "169.254.169.254" in message or "security-credentials" in message, message
    assert "requires option" not in message
    return message


def rendered_restore_config(body: dict[str, Any], node: int | None = None) -> str:
    """The pgbackrest.conf the control plane renders to read a body's restore_config
    repository (the renderer and plan a restore uses), for node `node` or the database."""
    request = parse_database_request(json.dumps(body), orchestrator="local")
    owner = request.spec if node is None else request.spec.nodes[node]
    config = owner.restore_config
    assert config is not None
    plans = plan_repositories(
        BackupConfig(repositories=[config.repository]),
        database_id=config.source_database_id,
        node_name=config.source_node_name,
    )
    layout = InstanceLayout(instance_dir="/i", pg_data="/i/data", pg_port=1, pg_socket_dir="/i")
    assert not secret_env(plans)  # no key in pgBackRest's environment either
    return render_config(layout, plans, process_max=1)


def with_guide_keys(repository: dict[str, Any]) -> None:
    """Body 1's keys given to a repository: this machine's stand-in for the instance profile
    the guide's keyless bodies rely on."""
    keys = guide_body("01_backup_config_s3")["spec"]["backup_config"]["repositories"][0]
    repository |= {"s3_key": keys["s3_key"], "s3_key_secret": keys["s3_key_secret"]}


async def add_node_from_backup(api: httpx.AsyncClient, guide: Guide) -> None:
    """Body 8: n4 is added on host-4 from n1's backup. As given (no keys, no instance
    profile here) it is refused before anything changes, with pgBackRest's credential error;
    with body 1's keys standing in for the instance profile n4 joins while n1..n3 write, with
    every committed row, and its own writes reach the others."""
    body = guide.localize(guide_body("08_add_node_from_backup"))
    config = rendered_restore_config(body, node=3)
    assert "repo1-s3-key-type=auto" in config
    assert "repo1-s3-key=" not in config and "s3-key-secret" not in config
    response = await api.post("/v1/databases/example", json=body)
    keyless_refusal(response, "spec.nodes[3].restore_config")
    assert "n4" not in nodes_of(await view(api))

    with_guide_keys(body["spec"]["nodes"][3]["restore_config"]["repository"])
    database = await view(api)
    async with writers(database) as load:
        await load.progress()
        answer = await accepted(api, "/v1/databases/example", body)
        await completed(api, "example", answer)
        database = await view(api)
        load.start(database, "n4")
        await load.progress()
    assert {i["node_name"]: i["host_id"] for i in database["instances"]}["n4"] == "host-4"
    await settle(database)
    await assert_holds(database, load.committed())


async def create_from_backup(api: httpx.AsyncClient, guide: Guide) -> None:
    """Body 7: example-copy is made from n1's backup (on the guide's hosts, which `example`
    holds at the guide's port: the copy gets another). As given it is refused with
    pgBackRest's credential error and nothing is created; with body 1's keys standing in for
    the instance profile, every node of the copy holds n1's rows and the guide's password
    logs in."""
    body = guide.localize(guide_body("07_create_from_backup"), port=guide.second_port)
    config = rendered_restore_config(body)
    assert "repo1-s3-key-type=auto" in config and "repo1-s3-key=" not in config
    response = await api.post("/v1/databases", json=body)
    keyless_refusal(response, "spec.restore_config")
    assert (await api.get("/v1/databases/example-copy")).status_code == 404

    expected = await ids_on(await view(api), "n1")
    with_guide_keys(body["spec"]["restore_config"]["repository"])
    answer = await accepted(api, "/v1/databases", body)
    await completed(api, "example-copy", answer)
    copy = await view(api, "example-copy")
    for node in ("n1", "n2", "n3"):
        conn = await connect(copy, node, password="password")
        try:
            found = {int(r[0]) for r in await conn.fetch("SELECT id FROM items")}
        finally:
            await conn.close()
        assert found == expected, node
    deleted = await api.delete("/v1/databases/example-copy")
    assert deleted.status_code == 202, deleted.text
    task = await wait_task(api, "example-copy", deleted.json()["task"]["task_id"])
    assert task["status"] == "completed", task


async def test_keyless_bucket_uses_the_instance_credentials(guide: Guide) -> None:
    """Body 4 on a database of its own, where no keys are stored for the bucket: each node's
    pgbackrest.conf says repo1-s3-key-type=auto and holds no key, pgBackRest runs with that
    option and no key (its own command line, which names every option it got, from the
    environment too), and the create fails with pgBackRest's credential error (no instance
    profile here), not a missing option."""
    # A port free now: the other tests' databases may hold the guide's ones.
    body = guide.localize(guide_body("04_schedules"), port=ports_for_every_host()[0])
    async with guide.server.client(timeout=60) as api:
        response = await api.post("/v1/databases", json={"id": "keyless", **body})
        assert response.status_code == 202, response.text
        task = await wait_task(api, "keyless", response.json()["task"]["task_id"], timeout=300)
        assert task["status"] == "failed", task
        error = task["error"]
        assert "stanza creation in repository s3" in error, error
        assert "169.254.169.254" in error or "security-credentials" in error, error
        assert "requires option" not in error
        for node in ("n1", "n2", "n3"):
            config = guide.config(node, "keyless")
            assert "repo1-s3-key-type=auto" in config
            assert "repo1-s3-key=" not in config and "s3-key-secret" not in config
            assert not [k for k in guide.secret_env(node, "keyless") if "_S3_" in k]
        begun = [
            e["message"]
            for e in await full_log(api, "keyless", task["task_id"])
            if "stanza-create command begin" in e["message"]
        ]
        assert begun
        for line in begun:
            assert "--repo1-s3-key-type=auto" in line, line
            assert "--repo1-s3-key=" not in line and "--repo1-s3-key-secret" not in line, line
        deleted = await api.delete("/v1/databases/keyless")
        assert deleted.status_code == 202, deleted.text
        done = await wait_task(api, "keyless", deleted.json()["task"]["task_id"])
        assert done["status"] == "completed", done
