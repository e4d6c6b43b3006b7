"""The compose stack: the control plane itself in a container, driving its engine's socket."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.os_user import OS_USER, give_to_os_user
from tests.support.pgcluster import free_port

REPO = Path(__file__).resolve().parents[1]
IMAGE = "controlplane-e2e/controlplane:latest"


pytestmark = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose missing"
)


def _run(argv: list[str], **kwargs: Any) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    assert result.returncode == 0, f"{argv[:3]} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture
def stack(work_dir: Path, docker_url: str) -> Iterator[tuple[str, Path, Path]]:
    """The controlplane image built from this checkout and `docker-compose up`; yields the API
    URL, the data dir and the backup dir. Everything is removed afterwards."""
    context = work_dir / "compose-context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    for name in ("controlplane", "templates"):
        shutil.copytree(REPO / name, context / name, symlinks=True)
    # Wheels built here: the image may not trust the proxy this machine reaches PyPI through.
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(context / "wheels")]
    _run([*pip, f"{context}[server]"])
    instance_image = os.environ["CONTROLPLANE_INSTANCE_IMAGE"]
    env = {
        **os.environ,
        "DOCKER_BUILDKIT": "0",
        "DOCKER_SOCKET": docker_url.removeprefix("unix://"),
        "CONTROLPLANE_INSTANCE_IMAGE": instance_image,
        "CONTROLPLANE_IMAGE": IMAGE,
        "CONTROLPLANE_DATA_DIR": str(work_dir / "compose-data"),
        "CONTROLPLANE_BACKUP_DIR": str(work_dir / "compose-backups"),
        "CONTROLPLANE_PORT": str(free_port()),
    }
    dockerfile = str(REPO / "compose" / "Dockerfile.controlplane")
    build = ["docker", "build", "--network=host", "-q", "-f", dockerfile]
    _run(
        [*build, "--build-arg", f"BASE_IMAGE={instance_image}", "-t", IMAGE, str(context)], env=env
    )
    (work_dir / "compose-backups").mkdir()
    give_to_os_user(work_dir / "compose-backups")
    compose = ["docker-compose", "-f", str(REPO / "compose" / "docker-compose.yml"), "-p", "cpe2e"]
    _run([*compose, "up", "-d", "--no-build", "controlplane"], env=env)
    try:
        url = f"http://127.0.0.1:{env['CONTROLPLANE_PORT']}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url, work_dir / "compose-data", work_dir / "compose-backups"
    finally:
        subprocess.run([*compose, "down"], env=env, capture_output=True, check=False)
        namespace_filter = "label=controlplane.instance"
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", namespace_filter],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], env=env, capture_output=True, check=False)


def test_compose_stack_runs_the_curl_tour(stack: tuple[str, Path, Path]) -> None:
    """`docker-compose up` runs the control plane in a container on the host network; the
    README's curl tour (`compose/tour.sh`) passes against it: a 2-node database replicates,
    backs up into the bind-mounted backup dir, restores in place to the set's rows, and goes."""
    url, data_dir, backups = stack
    env = {
        **os.environ,
        "CONTROLPLANE_URL": url,
        "CONTROLPLANE_TOKEN": (data_dir / "admin-token").read_text().strip(),
    }
    result = subprocess.run(
        [str(REPO / "compose" / "tour.sh"), str(backups)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert result.stdout.rstrip().endswith("tour complete")
    infos = list((backups / "databases" / "storefront").rglob("backup/db/backup.info"))
    assert infos  # the repository outlives the database
    # pgBackRest ran as the image's postgres user, whose uid is the host OS user's.
    assert {p.stat().st_uid for p in infos} == {pwd.getpwnam(OS_USER).pw_uid}
