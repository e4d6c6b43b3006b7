"""A real `controlplane serve` on the Docker orchestrator, and the engine-side cleanup."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from controlplane.orchestrator.docker_layout import LABEL, namespace_of
from tests.support.server import ServerProcess


class DockerServer(ServerProcess):
    """`ServerProcess` whose server runs `e2e.support.serve` with CONTROLPLANE_ORCHESTRATOR=docker
    (embedded state store under its data dir)."""

    def __init__(self, data_dir: Path, *, docker_url: str, image: str) -> None:
        super().__init__(
            data_dir,
            database_url=None,
            env={
                "CONTROLPLANE_ORCHESTRATOR": "docker",
                "CONTROLPLANE_DOCKER_URL": docker_url,
                "CONTROLPLANE_INSTANCE_IMAGE": image,
            },
        )
        self.docker_url = docker_url

    def start(self, timeout: float = 60.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "e2e.support.serve", "serve"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self.token = (self.data_dir / "admin-token").read_text().strip()
                    return
            time.sleep(0.1)
        raise AssertionError(f"server did not become healthy:\n{self.log_text()[-3000:]}")

    def wait_exit(self, timeout: float) -> int:
        """Wait for the server to die by itself (a crash test's SIGKILL); its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def containers(self, **labels: str) -> list[Any]:
        """This server's containers (all states), optionally filtered by more labels."""
        client = docker.DockerClient(base_url=self.docker_url, version="1.41")
        filters = [f"{LABEL}.namespace={namespace_of(self.data_dir.resolve())}"]
        filters += [f"{LABEL}.{k}={v}" for k, v in labels.items()]
        for _ in range(10):
            try:
                found: list[Any] = client.containers.list(all=True, filters={"label": filters})
            except docker.errors.NotFound:  # one went away between the list and its inspect
                continue
            return found
        raise AssertionError("containers kept disappearing while being listed")

    def remove_containers(self) -> None:
        """Remove every container and volume this server's orchestrator made."""
        client = docker.DockerClient(base_url=self.docker_url, version="1.41")
        namespace = f"{LABEL}.namespace={namespace_of(self.data_dir.resolve())}"
        for container in client.containers.list(all=True, filters={"label": [namespace]}):
            container.remove(force=True)
        for volume in client.volumes.list(filters={"label": [namespace]}):
            volume.remove(force=True)
