"""The compose stack: the control plane in a container driving its engine's socket, its state
in the `store` service, backups to the `s3` service."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.orchestrator.docker_layout import LABEL, namespace_of
from tests.support.api import create_and_wait, database_body
from tests.support.data import TABLE, backup, digest, on_every, restore, restore_config, write
from tests.support.object_storage import S3_KEY, S3_KEY_SECRET, S3_REGION, s3_keys
from tests.support.os_user import OS_USER, give_to_os_user
from tests.support.pgcluster import free_port
from tests.support.tls import TlsFiles, make_test_tls

REPO = Path(__file__).resolve().parents[1]
IMAGE = "controlplane-e2e/controlplane:latest"
S3_IMAGE = "controlplane-e2e/s3:latest"
BUCKET = "controlplane-backups"


pytestmark = [
    pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose missing"),
    # One worker runs this module: its deployment is the module's own.
    pytest.mark.xdist_group("compose"),
]


@dataclass(frozen=True)
class Stack:
    url: str
    token: str
    data_dir: Path
    backups: Path
    tls: TlsFiles
    s3_port: int
    compose: list[str]  # docker-compose argv with this stack's file and project
    env: dict[str, str]

    def store_sql(self, sql: str) -> str:
        """`sql` run by psql in the store container (as postgres, over its socket)."""
        argv = [*self.compose, "exec", "-T", "-u", "postgres", "store"]
        argv += ["psql", "-h", "/run/postgresql", "-d", "controlplane", "-XAtqc", sql]
        return _run(argv, env=self.env).strip()


def _run(argv: list[str], **kwargs: Any) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    assert result.returncode == 0, f"{argv[:3]} failed:\n{result.stdout}\n{result.stderr}"
    return str(result.stdout)


def _build_context(context: Path) -> None:
    """This checkout's files the images need, and the wheels they install offline: the image
    may not trust the proxy this machine reaches PyPI through."""
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    for name in ("controlplane", "templates", "compose"):
        shutil.copytree(REPO / name, context / name, symlinks=True)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(context / "wheels")]
    _run([*pip, f"{context}[server]"])
    _run([*pip, "moto[s3]", "flask", "flask-cors", "gunicorn"])


@pytest.fixture(scope="module")
def stack(work_dir: Path, docker_url: str) -> Iterator[Stack]:
    """The controlplane and s3 images built from this checkout, a TLS certificate for
    `localhost`, and `docker-compose up` of store, s3 and controlplane, shared by this module's
    tests (each uses its own database). Everything is removed afterwards: the stack's
    containers and volumes, and the instances its control plane made."""
    context = work_dir / "compose-context"
    _build_context(context)
    instance_image = os.environ["CONTROLPLANE_INSTANCE_IMAGE"]
    tls = make_test_tls(work_dir / "compose-tls")
    # The s3 service runs as the image's postgres user, whose uid is the OS user's.
    entry = pwd.getpwnam(OS_USER)
    os.chown(tls.key_file, entry.pw_uid, entry.pw_gid)
    data_dir = work_dir / "compose-data"
    backups = work_dir / "compose-backups"
    s3_port = free_port()
    env = {
        **os.environ,
        "DOCKER_BUILDKIT": "0",
        "DOCKER_SOCKET": docker_url.removeprefix("unix://"),
        "CONTROLPLANE_INSTANCE_IMAGE": instance_image,
        "CONTROLPLANE_IMAGE": IMAGE,
        "CONTROLPLANE_S3_IMAGE": S3_IMAGE,
        "CONTROLPLANE_DATA_DIR": str(data_dir),
        "CONTROLPLANE_BACKUP_DIR": str(backups),
        "CONTROLPLANE_PORT": str(free_port()),
        "CONTROLPLANE_S3_PORT": str(s3_port),
        "CONTROLPLANE_S3_TLS_DIR": str(tls.ca_file.parent),
        "CONTROLPLANE_S3_BUCKETS": BUCKET,
    }
    build = ["docker", "build", "--network=host", "-q"]
    build += ["--build-arg", f"BASE_IMAGE={instance_image}"]
    for dockerfile, image in (("Dockerfile.controlplane", IMAGE), ("Dockerfile.s3", S3_IMAGE)):
        _run([*build, "-f", str(REPO / "compose" / dockerfile), "-t", image, str(context)], env=env)
    backups.mkdir()
    give_to_os_user(backups)
    project = f"cpe2e{os.getpid()}"  # its own volumes, beside any other run on this engine
    compose = ["docker-compose", "-f", str(REPO / "compose" / "docker-compose.yml"), "-p", project]
    try:
        # Returns once store and s3 are healthy and the control plane's container started.
        _run([*compose, "up", "-d", "--no-build"], env=env)
        url = f"http://127.0.0.1:{env['CONTROLPLANE_PORT']}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        token = (data_dir / "admin-token").read_text().strip()
        yield Stack(url, token, data_dir, backups, tls, s3_port, compose, env)
    finally:
        logs = subprocess.run([*compose, "logs", "--tail", "40"], env=env, capture_output=True)
        print(logs.stdout.decode(errors="replace")[-8000:])  # shown when a test failed
        subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, check=False)
        # Only this control plane's instances (another one may share the engine).
        mine = f"{LABEL}.namespace={namespace_of(data_dir.resolve())}"
        for kind in ("ps", "volume"):
            listing = ["docker", kind] + (["ls", "-q"] if kind == "volume" else ["-aq"])
            ids = subprocess.run(
                [*listing, "--filter", f"label={mine}"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            if ids:
                remove = (
                    ["docker", "volume", "rm", "-f"] if kind == "volume" else ["docker", "rm", "-f"]
                )
                subprocess.run([*remove, *ids], env=env, capture_output=True, check=False)


def test_compose_stack_runs_the_curl_tour(stack: Stack) -> None:
    """`docker-compose up` runs the control plane in a container on the host network; the
    README's curl tour (`compose/tour.sh`) passes against it: a 2-node database replicates,
    backs up into the bind-mounted backup dir, restores in place to the set's rows, and goes."""
    env = {**os.environ, "CONTROLPLANE_URL": stack.url, "CONTROLPLANE_TOKEN": stack.token}
    result = subprocess.run(
        [str(REPO / "compose" / "tour.sh"), str(stack.backups)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert result.stdout.rstrip().endswith("tour complete")
    infos = list((stack.backups / "databases" / "storefront").rglob("backup/db/backup.info"))
    assert infos  # the repository outlives the database
    # pgBackRest ran as the image's postgres user, whose uid is the host OS user's.
    assert {p.stat().st_uid for p in infos} == {pwd.getpwnam(OS_USER).pw_uid}


def _s3_objects(stack: Stack, prefix: str) -> list[str]:
    return s3_keys(stack.s3_port, stack.tls.ca_file, BUCKET, prefix)


async def test_compose_stack_keeps_its_state_in_store_and_backs_up_to_s3(stack: Stack) -> None:
    """The control plane's state is in the `store` service (not an embedded store in its data
    dir); a database created through the API backs up to the `s3` service over TLS, the set is
    in the catalog and in the bucket, and an in-place restore brings back exactly its rows."""
    assert not (stack.data_dir / "store").exists()
    tables = stack.store_sql(
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables"
        " WHERE tableowner = 'controlplane'"
    ).split(",")
    assert {"databases", "instances", "tasks", "tokens"} <= set(tables)
    # The control plane is connected to it, over the shared socket: the store has no TCP.
    connected = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'controlplane'"
    assert int(stack.store_sql(f"{connected} AND client_port = -1")) >= 1
    assert stack.store_sql(f"{connected} AND client_port <> -1") == "0"
    assert stack.store_sql("SHOW listen_addresses") == ""

    repository = {
        "type": "s3",
        "base_path": "/lakeside",
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
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=60) as api:
        body = database_body("lakeside", backup_config={"repositories": [repository]})
        database = await create_and_wait(api, body)
        assert stack.store_sql("SELECT id FROM databases WHERE id = 'lakeside'") == "lakeside"
        await on_every(database, TABLE)
        await write(database, "n1", range(1, 301))
        expected = await digest(database)
        label = (await backup(api, "lakeside"))["result"]["label"]
        catalog = (await api.get("/v1/databases/lakeside/nodes/n1/backups")).json()["backups"]
        assert label in [entry["label"] for entry in catalog]
        objects = _s3_objects(stack, "lakeside/")
        assert any(key.endswith(f"/backup/db/{label}/backup.manifest") for key in objects), objects

        await write(database, "n1", range(301, 401))
        assert await digest(database) != expected
        config = restore_config("lakeside", "n1", repository, type="immediate", set=label)
        await restore(api, "lakeside", {"restore_config": config})
        assert await digest(database) == expected
        assert expected.startswith("300:")
