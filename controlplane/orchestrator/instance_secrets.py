"""How repository secrets reach the pgBackRest that Postgres itself runs (archive_command,
restore_command), on both orchestrators, without sitting in a file or a process environment.

- At rest, an instance's secrets are sealed with the control plane's key (`ENV_FILE`): the file
  tells a process of the instances' OS user nothing.
- When the control plane starts Postgres it hands the postmaster one open file, on descriptor
  `SECRETS_FD`, holding `export NAME='value'` lines: a sealed memory file on `local`, and on
  `docker` a file in a memory-backed directory that the container opens and deletes at once.
  Every process Postgres forks inherits the descriptor; none has the secrets in its environment.
- archive_command and restore_command run `RUNNER_FILE`: it reads that descriptor (only when it
  is ours) and execs pgBackRest, so the secrets live in that pgBackRest command's own
  environment and nowhere else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

import msgspec

from controlplane.spec.secrets import SecretBox
from controlplane.system.files import OwnedFiles

ENV_FILE = "postmaster.env"
RUNNER_FILE = "pgbackrest-run"
SECRETS_FD = 9
MEMORY_FILE_NAME = "controlplane-secrets"
# Inside an instance container: where the file handed to Postgres appears (memory-backed).
CONTAINER_SECRETS_DIR = "/run/controlplane-secrets"
CONTAINER_SECRETS_NAME = "env"
CONTAINER_SECRETS_FILE = f"{CONTAINER_SECRETS_DIR}/{CONTAINER_SECRETS_NAME}"
# Inside a swarm task: the Swarm secret the postmaster gets them from (read-only, kept).
SWARM_SECRET_FILE = "/run/secrets/controlplane-postmaster-env"

RUNNER = f"""\
#!/bin/sh
# Managed by controlplane. pgBackRest as Postgres runs it (archive_command, restore_command):
# the repository secrets come from the file the postmaster was started with, on descriptor
# {SECRETS_FD}, and only when that descriptor is the one the control plane handed over.
case "$(readlink /proc/self/fd/{SECRETS_FD} 2>/dev/null)" in
  "/memfd:{MEMORY_FILE_NAME} (deleted)" | {CONTAINER_SECRETS_DIR}/* | {SWARM_SECRET_FILE})
    . /proc/self/fd/{SECRETS_FD} ;;
esac
exec pgbackrest "$@"
"""

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# What a postmaster keeps of the control plane's own environment: nothing that could be a
# credential of the control plane's.
_INHERITED = re.compile(r"^(PATH|LANG|LANGUAGE|LC_[A-Z]+|TZ|PGTZ|TMPDIR)$")


def export_lines(env: Mapping[str, str]) -> str:
    """The secrets as `export NAME='value'` lines, for the runner to source."""
    lines = ["# controlplane: repository secrets for pgBackRest"]
    for name, value in sorted(env.items()):
        if not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        lines.append(f"export {name}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


def parse_export_lines(text: str) -> dict[str, str]:
    """Read back what `export_lines` wrote (values may span lines)."""
    env = {}
    for token in shlex.split(text, comments=True):
        if token != "export":
            name, _, value = token.partition("=")
            env[name] = value
    return env


def postmaster_environment() -> dict[str, str]:
    """The environment a postmaster starts with: locale, time zone and PATH only."""
    return {name: value for name, value in os.environ.items() if _INHERITED.match(name)}


def memory_file(env: Mapping[str, str], owner: tuple[int, int] | None) -> int:
    """A sealed, read-only memory file holding `export_lines(env)`, given to `owner`; the
    caller closes the returned descriptor once the child has it."""
    fd = os.memfd_create(MEMORY_FILE_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, export_lines(env).encode())
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, 0o400)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sealed(box: SecretBox, env: Mapping[str, str]) -> str:
    """`ENV_FILE`'s content: the environment sealed with the control plane's key."""
    return box.encrypt(dict(env))


def store(files: OwnedFiles, box: SecretBox, path: Path, env: Mapping[str, str]) -> bool:
    """Seal `env` into `ENV_FILE` at `path`; False when it already holds exactly that."""
    if path.exists() and unsealed(box, path) == dict(env):
        return False
    return files.write(path, sealed(box, env))


def unsealed(box: SecretBox, path: Path) -> dict[str, str]:
    """What `ENV_FILE` at `path` holds ({} when there is none). A file an earlier version wrote
    in the clear (JSON, or export lines) is still read; the next write seals it."""
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        if text.startswith("{"):
            return msgspec.json.decode(text, type=dict[str, str])
        if not text or text.startswith(("#", "export ")):
            return parse_export_lines(text)
        return box.decrypt(text)
    return {}
