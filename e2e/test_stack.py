"""The Swarm stack (compose/stack.yml) on the single-node swarm of `e2e/swarm up`: two control
plane replicas on the manager with CONTROLPLANE_ORCHESTRATOR=swarm, sharing the `store`
service, backing up to the `s3` service, with the secret key as a Swarm secret."""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from controlplane.orchestrator.docker_layout import LABEL, namespace_of
from controlplane.orchestrator.swarm_layout import HOST_LABEL
from e2e.test_compose import _build_context
from tests.support.api import create_and_wait, database_body, full_log, wait_task
from tests.support.data import TABLE, backup, digest, on_every, restore, restore_config, write
from tests.support.deployment import E2E_ROOT, SWARM_HOST_ID, work_root
from tests.support.eventually import eventually
from tests.support.object_storage import S3_KEY, S3_KEY_SECRET, S3_REGION, s3_keys
from tests.support.os_user import OS_USER, give_to_os_user
from tests.support.pgcluster import bind_succeeds, free_port
from tests.support.tls import TlsFiles, make_test_tls

REPO = Path(__file__).resolve().parents[1]
SWARM_URL = os.environ.get("CONTROLPLANE_SWARM_DOCKER_HOST")
INSTANCE_IMAGE = os.environ.get("CONTROLPLANE_INSTANCE_IMAGE", "controlplane-e2e/postgres:15")
IMAGE = "controlplane-e2e/controlplane:latest"
S3_IMAGE = "controlplane-e2e/s3:latest"
BUCKET = "controlplane-backups"
STACK = "cpstack"
SECRET = "controlplane_secret_key"  # the external secret compose/stack.yml names
PASSWORD = "s3cret-pass"  # database_body's owner password, which tests.support.api.connect uses

pytestmark = pytest.mark.skipif(
    not SWARM_URL,
    reason="no swarm: run `e2e/swarm up` and set CONTROLPLANE_SWARM_DOCKER_HOST",
)


@dataclass(frozen=True)
class Stack:
    urls: list[str]  # one API per replica, by slot
    token: str
    secret_key: str
    data_dir: Path
    tls: TlsFiles
    s3_port: int
    env: dict[str, str]  # the docker CLI's, on the swarm's engine

    def docker(self, *argv: str) -> str:
        return _run(["docker", *argv], env=self.env)

    def replica_logs(self) -> str:
        """Both control plane replicas' logs, each line prefixed with its task's name."""
        argv = ["docker", "service", "logs", "--no-trunc", f"{STACK}_controlplane"]
        found = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=True)
        return found.stdout + found.stderr

    def store_sql(self, sql: str) -> str:
        """`sql` run by psql in the store's task (as postgres, over its socket)."""
        [container] = self.docker(
            "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={STACK}_store"
        ).split()
        argv = ["exec", "-u", "postgres", container, "psql", "-h", "/run/postgresql"]
        return self.docker(*argv, "-d", "controlplane", "-XAtqc", sql).strip()


def _run(argv: list[str], **kwargs: Any) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    assert result.returncode == 0, f"{argv[:4]} failed:\n{result.stdout}\n{result.stderr}"
    return str(result.stdout)


def _two_free_ports() -> int:
    """A base port whose successor is free too: replica slot 1 and slot 2 listen there."""
    for _ in range(50):
        port = random.randint(20000, 39999)
        if bind_succeeds("127.0.0.1", port) and bind_succeeds("127.0.0.1", port + 1):
            return port
    raise AssertionError("no two consecutive free ports")


def _images(env: dict[str, str], work_dir: Path) -> None:
    """The instance image from the e2e engine (it builds it), the control plane and s3 images
    built from this checkout into the swarm's engine."""
    missing = subprocess.run(
        ["docker", "image", "inspect", INSTANCE_IMAGE], env=env, capture_output=True, check=False
    )
    if missing.returncode != 0:
        source = {**env, "DOCKER_HOST": f"unix://{E2E_ROOT / 'docker.sock'}"}
        save = ["docker", "save", INSTANCE_IMAGE]
        with subprocess.Popen(save, env=source, stdout=subprocess.PIPE) as saved:
            _run(["docker", "load", "-q"], env=env, stdin=saved.stdout)
        assert saved.returncode == 0, f"no {INSTANCE_IMAGE} in the e2e engine: run e2e/run up"
    context = work_dir / "context"
    _build_context(context)
    build = ["docker", "build", "--network=host", "-q"]
    build += ["--build-arg", f"BASE_IMAGE={INSTANCE_IMAGE}"]
    for dockerfile, image in (("Dockerfile.controlplane", IMAGE), ("Dockerfile.s3", S3_IMAGE)):
        _run([*build, "-f", str(REPO / "compose" / dockerfile), "-t", image, str(context)], env=env)
    shutil.rmtree(context)


def _running(env: dict[str, str], service: str) -> list[str]:
    """The slots of `service`'s tasks that Swarm sees running (past their healthcheck)."""
    listing = ["docker", "service", "ps", "--filter", "desired-state=running"]
    listing += ["--format", "{{.Name}} {{.CurrentState}}", f"{STACK}_{service}"]
    found = subprocess.run(listing, env=env, capture_output=True, text=True, check=False)
    names = [line.split(" ") for line in found.stdout.splitlines()]
    return sorted(name.rsplit(".", 1)[1] for name, state, *_ in names if state == "Running")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """`docker stack deploy -c compose/stack.yml` with the node labelled, the secret key
    created as a Swarm secret, a TLS certificate for the S3 server; afterwards `docker stack
    rm` and everything the stack and its control plane made (instance services, volumes,
    the secret)."""
    work_dir = Path(tempfile.mkdtemp(prefix="cps-stack-", dir=work_root("swarm")))
    give_to_os_user(work_dir)
    env = {
        **os.environ,
        "DOCKER_HOST": str(SWARM_URL),
        "DOCKER_CONFIG": str(work_dir / "cli"),
        "DOCKER_BUILDKIT": "0",
    }
    _images(env, work_dir)
    tls = make_test_tls(work_dir / "tls")
    entry = pwd.getpwnam(OS_USER)  # the s3 task runs as the image's postgres user
    os.chown(tls.key_file, entry.pw_uid, entry.pw_gid)
    data_dir = work_dir / "data"
    backups = work_dir / "backups"
    for path in (data_dir, backups):
        path.mkdir()
        give_to_os_user(path)
    port = _two_free_ports()
    s3_port = free_port()
    env |= {
        "CONTROLPLANE_SWARM_SOCKET": str(SWARM_URL).removeprefix("unix://"),
        "CONTROLPLANE_INSTANCE_IMAGE": INSTANCE_IMAGE,
        "CONTROLPLANE_IMAGE": IMAGE,
        "CONTROLPLANE_S3_IMAGE": S3_IMAGE,
        "CONTROLPLANE_DATA_DIR": str(data_dir),
        "CONTROLPLANE_BACKUP_DIR": str(backups),
        "CONTROLPLANE_PORT": str(port),
        "CONTROLPLANE_S3_PORT": str(s3_port),
        "CONTROLPLANE_S3_TLS_DIR": str(tls.ca_file.parent),
        "CONTROLPLANE_S3_BUCKETS": BUCKET,
    }
    node = _run(["docker", "node", "ls", "-q"], env=env).split()[0]
    _run(
        ["docker", "node", "update", "--label-add", f"{HOST_LABEL}={SWARM_HOST_ID}", node], env=env
    )
    secret_key = Fernet.generate_key().decode()
    _run(["docker", "secret", "create", SECRET, "-"], env=env, input=secret_key)
    stack_file = str(REPO / "compose" / "stack.yml")
    urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    try:
        _run(
            ["docker", "stack", "deploy", "--resolve-image", "never", "-c", stack_file, STACK],
            env=env,
        )
        deadline = time.monotonic() + 600
        expected = {"controlplane": ["1", "2"], "store": ["1"], "s3": ["1"]}
        while not all(map(_healthy, urls)) or any(
            _running(env, service) != slots for service, slots in expected.items()
        ):
            assert time.monotonic() < deadline, "the stack's tasks did not get healthy"
            time.sleep(1)
        token = (data_dir / "admin-token").read_text().strip()
        yield Stack(urls, token, secret_key, data_dir, tls, s3_port, env)
    finally:
        _tear_down(env, data_dir)
        shutil.rmtree(work_dir, ignore_errors=True)


def _tear_down(env: dict[str, str], data_dir: Path) -> None:
    """The stack's logs (shown when a test failed), then `docker stack rm`, the control
    plane's instance services and volumes, the stack's volumes and the secret."""
    for service in ("controlplane", "store", "s3"):
        for what in (["ps", "--no-trunc"], ["logs", "--tail", "150"]):
            shown = subprocess.run(
                ["docker", "service", *what, f"{STACK}_{service}"],
                env=env,
                capture_output=True,
                check=False,
            )
            output = (shown.stdout + shown.stderr).decode(errors="replace")
            print(f"--- {service} {what[0]}\n{output[-30000:]}")

    def docker(*argv: str) -> list[str]:
        found = subprocess.run(
            ["docker", *argv], env=env, capture_output=True, text=True, check=False
        )
        return found.stdout.split()

    def wait_gone(*filters: str) -> None:
        deadline = time.monotonic() + 120
        argv = ["ps", "-aq", *(f for label in filters for f in ("--filter", label))]
        while docker(*argv) and time.monotonic() < deadline:
            time.sleep(0.5)

    # The control plane first: its monitor would start an instance service removed before.
    docker("stack", "rm", STACK)
    wait_gone(f"label=com.docker.stack.namespace={STACK}")
    mine = f"label={LABEL}.namespace={namespace_of(data_dir.resolve())}"
    services = docker("service", "ls", "-q", "--filter", mine)
    if services:
        docker("service", "rm", *services)
    for kind in ("secret", "config"):
        found = docker(kind, "ls", "-q", "--filter", mine)
        if found:
            docker(kind, "rm", *found)
    wait_gone("label=com.docker.swarm.service.id")
    stack_volumes = f"label=com.docker.stack.namespace={STACK}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a stopping task may hold its volume a while longer
        volumes = docker("volume", "ls", "-q", "--filter", mine)
        volumes += docker("volume", "ls", "-q", "--filter", stack_volumes)
        if not volumes:
            break
        docker("volume", "rm", "-f", *volumes)
        time.sleep(1)
    docker("secret", "rm", SECRET)


def _s3_objects(stack: Stack, prefix: str) -> list[str]:
    return s3_keys(stack.s3_port, stack.tls.ca_file, BUCKET, prefix)


async def test_stack_runs_two_replicas_backs_up_to_s3_and_runs_each_task_once(
    stack: Stack,
) -> None:
    """Both replicas serve the API on one store; a database created through one backs up to the
    stack's S3 server through the other and restores in place to the backed-up rows; every
    task and every step ran exactly once although two workers poll the store; no secret is in
    the stack's or the instances' service specs."""
    services = json.loads(stack.docker("service", "inspect", f"{STACK}_controlplane"))
    [spec] = services
    assert spec["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
    assert spec["Spec"]["TaskTemplate"]["Placement"]["Constraints"] == ["node.role == manager"]
    assert _running(stack.env, "controlplane") == ["1", "2"]
    # The state is in `store`, reached over its socket only: the store has no TCP.
    connected = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'controlplane'"
    assert int(stack.store_sql(f"{connected} AND client_port = -1")) >= 2
    assert stack.store_sql(f"{connected} AND client_port <> -1") == "0"
    assert stack.store_sql("SHOW listen_addresses") == ""
    assert not (stack.data_dir / "store").exists()
    assert not (stack.data_dir / "secret.key").exists()  # the key is the Swarm secret

    repository = {
        "type": "s3",
        "base_path": "/harbour",
        "s3_bucket": BUCKET,
        "s3_region": S3_REGION,
        "s3_endpoint": "localhost",
        "s3_uri_style": "path",
        "s3_key": S3_KEY,
        "s3_key_secret": S3_KEY_SECRET,
        "storage_port": stack.s3_port,
        "storage_ca_file": str(stack.tls.ca_file),
    }
    headers = {"Authorization": f"Bearer {stack.token}"}
    first = httpx.AsyncClient(base_url=stack.urls[0], headers=headers, timeout=60)
    second = httpx.AsyncClient(base_url=stack.urls[1], headers=headers, timeout=60)
    async with first, second:
        body = database_body(
            "harbour", password=PASSWORD, backup_config={"repositories": [repository]}
        )
        database = await create_and_wait(first, body)
        assert stack.store_sql("SELECT id FROM databases WHERE id = 'harbour'") == "harbour"
        await on_every(database, TABLE)
        await write(database, "n1", range(1, 251))
        expected = await digest(database)
        assert expected.startswith("250:")
        label = (await backup(second, "harbour"))["result"]["label"]
        catalog = (await first.get("/v1/databases/harbour/nodes/n1/backups")).json()["backups"]
        assert label in [entry["label"] for entry in catalog]
        objects = _s3_objects(stack, "harbour/")
        assert any(key.endswith(f"/backup/db/{label}/backup.manifest") for key in objects), objects

        await write(database, "n1", range(251, 301))
        assert (await digest(database)).startswith("300:")
        config = restore_config("harbour", "n1", repository, type="immediate", set=label)
        await restore(second, "harbour", {"restore_config": config})
        assert await digest(database) == expected

        await _assert_each_task_ran_once(stack, first)
        _assert_no_secret_in_specs(stack, [PASSWORD, S3_KEY_SECRET])

        response = await second.delete("/v1/databases/harbour")
        assert response.status_code == 202, response.text
        task = await wait_task(first, "harbour", response.json()["task"]["task_id"], timeout=300)
        assert task["status"] == "completed", task["error"]
    mine = f"label={LABEL}.namespace={namespace_of(stack.data_dir.resolve())}"

    async def instance_services() -> bool:
        return not stack.docker("service", "ls", "-q", "--filter", mine).split()

    await eventually(instance_services, timeout=60, what="the instance services to go")


async def _assert_each_task_ran_once(stack: Stack, api: httpx.AsyncClient) -> None:
    """Every task of the database was claimed once (attempts = 1, although both replicas'
    workers poll the store): its log shows each step started once, never a resumed attempt,
    and one end; and across both replicas' own logs each of its steps started once, on one
    replica."""
    rows = stack.store_sql(
        "SELECT task_id || ' ' || type || ' ' || status || ' ' || attempts"
        " FROM tasks WHERE database_id = 'harbour' ORDER BY created_at"
    ).splitlines()
    tasks = [row.split(" ") for row in rows]
    assert {"create", "node_backup", "restore"} <= {t[1] for t in tasks}, rows
    replica_logs = stack.replica_logs().splitlines()
    ran_on: dict[str, set[str]] = {}
    for task_id, kind, status, attempts in tasks:
        assert status == "completed" and attempts == "1", rows
        entries = await full_log(api, "harbour", task_id)
        messages = [e["message"] for e in entries]
        assert not [m for m in messages if m.startswith("resuming task")], (kind, messages)
        started = Counter(m for m in messages if m.startswith("step ") and m.endswith(" started"))
        steps = stack.store_sql(
            f"SELECT count(*) FROM task_steps WHERE task_id = '{task_id}' AND status = 'completed'"
        )
        assert started and set(started.values()) == {1}, (kind, started)
        assert len(started) == int(steps), (kind, started, steps)
        assert messages.count("task completed") == 1, (kind, messages)
        # The replicas' own logs: `<service>.<slot>.<task>@<node> | ... step x started [task_id=`
        lines = [
            line
            for line in replica_logs
            if f"[task_id={task_id} " in line and re.search(r": step \S+ started \[", line)
        ]
        in_logs = Counter(re.sub(r".*: (step \S+ started) \[.*", r"\1", line) for line in lines)
        assert in_logs == started, (kind, in_logs, started)
        ran_on[f"{kind} {task_id}"] = {line.split(".")[1] for line in lines}
        assert len(ran_on[f"{kind} {task_id}"]) == 1, ran_on
    print("replica slot of each task:", ran_on)


def _assert_no_secret_in_specs(stack: Stack, values: list[str]) -> None:
    """Neither the stack's services nor the instances' (nor their containers) show the secret
    key, the admin token, a user's password or a repository key."""
    services = stack.docker("service", "ls", "-q").split()
    containers = stack.docker("ps", "-aq").split()
    assert len(services) >= 4  # store, s3, controlplane and the database's instance
    shown = stack.docker("service", "inspect", *services)
    shown += stack.docker("inspect", *containers)
    for value in (stack.secret_key, stack.token, *values):
        assert value not in shown
    # The secret is referenced by name only.
    assert SECRET in stack.docker("service", "inspect", f"{STACK}_controlplane")
