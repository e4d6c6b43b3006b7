"""Shared fixtures: scratch directories the Postgres OS user can enter."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.os_user import give_to_os_user


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A fresh 0755 directory owned by the Postgres OS user (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="cpt-", dir="/tmp"))
    give_to_os_user(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)
