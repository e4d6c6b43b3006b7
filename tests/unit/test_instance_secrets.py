"""How repository secrets reach the pgBackRest Postgres runs: export lines, the sealed memory
file, the runner that reads it only from the descriptor the control plane handed over."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from controlplane.orchestrator import instance_secrets as secrets
from controlplane.spec.secrets import SecretBox
from controlplane.system.files import OwnedFiles

SECRET = "a'b c\n$HOME`x`"


def _runner(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The runner script, and an environment where `pgbackrest` prints the secret it got."""
    runner = tmp_path / secrets.RUNNER_FILE
    runner.write_text(secrets.RUNNER)
    runner.chmod(0o700)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pgbackrest"
    fake.write_text('#!/bin/sh\nprintf "%s|%s" "$PGBACKREST_REPO1_CIPHER_PASS" "$*"\n')
    fake.chmod(0o700)
    return runner, {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_export_lines_round_trip_any_value(tmp_path: Path) -> None:
    """Quotes, spaces and newlines survive `sh`'s `.` exactly; bad names are refused."""
    env = {"PGBACKREST_REPO1_S3_KEY_SECRET": SECRET, "PGBACKREST_REPO1_S3_KEY": "k"}
    text = secrets.export_lines(env)
    assert secrets.parse_export_lines(text) == env
    path = tmp_path / "env"
    path.write_text(text)
    script = f'. "{path}" && printf %s "$PGBACKREST_REPO1_S3_KEY_SECRET"'
    shown = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert shown.stdout == SECRET
    with pytest.raises(ValueError, match="invalid environment variable"):
        secrets.export_lines({"BAD NAME": "x"})


def test_runner_reads_the_memory_file_on_descriptor_9_and_passes_arguments(
    tmp_path: Path,
) -> None:
    runner, env = _runner(tmp_path)
    fd = secrets.memory_file({"PGBACKREST_REPO1_CIPHER_PASS": SECRET}, None)
    try:
        result = subprocess.run(
            ["sh", "-c", 'exec 9<&0 </dev/null && exec "$0" "$@"', str(runner), "a b", "%p"],
            stdin=fd,
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
    finally:
        os.close(fd)
    assert result.stdout == f"{SECRET}|a b %p"


def test_runner_ignores_a_descriptor_9_that_is_not_ours(tmp_path: Path) -> None:
    """A stray descriptor 9 (some other file) is never sourced: its content could be anything."""
    runner, env = _runner(tmp_path)
    planted = tmp_path / "planted"
    planted.write_text("export PGBACKREST_REPO1_CIPHER_PASS=planted\n")
    with planted.open() as handle:
        result = subprocess.run(
            ["sh", "-c", 'exec 9<&0 </dev/null && exec "$0" archive-push', str(runner)],
            stdin=handle,
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
    assert result.stdout == "|archive-push"
    no_fd = subprocess.run([str(runner), "x"], capture_output=True, text=True, env=env)
    assert no_fd.stdout == "|x"


def test_memory_file_is_sealed_and_read_only() -> None:
    fd = secrets.memory_file({"PGBACKREST_REPO1_CIPHER_PASS": "p"}, None)
    try:
        with pytest.raises(PermissionError):
            os.write(fd, b"x")
        assert os.fstat(fd).st_mode & 0o777 == 0o400
        assert os.read(fd, 4096).decode().endswith("export PGBACKREST_REPO1_CIPHER_PASS=p\n")
    finally:
        os.close(fd)


def test_env_file_is_sealed_and_old_clear_files_still_read(tmp_path: Path) -> None:

    box = SecretBox(Fernet(Fernet.generate_key()))
    path = tmp_path / secrets.ENV_FILE
    files = OwnedFiles("postgres")
    assert secrets.store(files, box, path, {"PGBACKREST_REPO1_CIPHER_PASS": "canary"})
    assert "canary" not in path.read_text()
    assert secrets.unsealed(box, path) == {"PGBACKREST_REPO1_CIPHER_PASS": "canary"}
    assert not secrets.store(files, box, path, {"PGBACKREST_REPO1_CIPHER_PASS": "canary"})
    path.write_text("export PGBACKREST_REPO1_CIPHER_PASS='old'\n")
    assert secrets.unsealed(box, path) == {"PGBACKREST_REPO1_CIPHER_PASS": "old"}
    path.write_text('{"PGBACKREST_REPO1_CIPHER_PASS": "older"}')
    assert secrets.unsealed(box, path) == {"PGBACKREST_REPO1_CIPHER_PASS": "older"}
    assert secrets.unsealed(box, tmp_path / "missing") == {}


def test_postmaster_environment_keeps_no_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLPLANE_STORE_URL", "postgresql://u:secret@h/db")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    env = secrets.postmaster_environment()
    assert "secret" not in "".join(env.values())
    assert env["LC_ALL"] == "C.UTF-8"
    assert "PATH" in env
