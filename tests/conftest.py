"""Shared fixtures and options: scratch directories the Postgres OS user can enter, and the
orchestrators the scenarios run on."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deployment import ORCHESTRATORS
from tests.support.os_user import give_to_os_user


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A fresh 0755 directory owned by the Postgres OS user (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="cpt-", dir="/tmp"))
    give_to_os_user(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--orchestrator",
        default=os.environ.get("CONTROLPLANE_ORCHESTRATOR", "local"),
        type=_orchestrators,
        help="orchestrators the scenarios in tests/scenarios run on: local, docker, swarm "
        "(comma-separated); docker needs the engine `e2e/run up` starts, swarm the swarm "
        "`e2e/swarm up` starts (CONTROLPLANE_SWARM_DOCKER_HOST)",
    )


def _orchestrators(value: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(ORCHESTRATORS))
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(ORCHESTRATORS)}")
    return chosen
