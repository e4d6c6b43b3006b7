"""Docker instance layout (pure): names, labels, mounts, argv and files of instance containers.

One instance is one container plus one named volume. Inside the container:

- PGDATA is a subdirectory of the named volume (`/var/lib/postgresql/data/pgdata`), so a crash
  mid-initdb leaves a scratch directory next to it, never half a cluster in PGDATA itself;
- the instance directory (`<data_dir>/instances/<id>`: postgresql.conf, pg_hba.conf,
  pgbackrest.conf, the sealed postmaster.env) is bind-mounted read-only AT THE SAME PATH as on
  the host, so every path the workflows render (config files, archive_command) means the same
  on both sides; only its `pgbackrest/` subdirectory (lock, log, spool) is writable;
- Postgres runs with `config_file` pointing at the instance directory. The postgresql.conf and
  pg_hba.conf inside PGDATA are never read, so a cluster restored from another instance's backup
  cannot bring that instance's port or archive_command back; only postgresql.auto.conf (ALTER
  SYSTEM, pgBackRest's recovery settings) is read from PGDATA, as Postgres always does;
- posix repositories are bind-mounted at their own path, one mount per database directory
  (`<base>/databases/<database>`): generations and repositories of that database appear without
  a new mount, other databases' backups stay out of sight. A repository only read for a restore
  (the source of a create-from-backup) is mounted read-only;
- the superuser password of the database lives in `<data_dir>/secrets/<database>/` (mounted
  read-only): libpq reads it through `passfile=` so no DSN — and so no pglogical catalog row —
  ever holds it;
- pgEdge's container options (see `orchestrator.base.ContainerOptions`) are recorded in the
  instance directory whenever a workflow hands them over, so every later container of the
  instance (a monitor restart, a one-off restore) gets them: extra volumes are bind mounts in
  every container of the instance; a posix repository under an extra volume's destination is
  reached through it (its directories are made under the volume's host path), not mounted on
  its own; labels, image and limits apply to the instance container, whose options digest label
  tells when it must be recreated for new ones;
- the repository secrets Postgres needs (archive_command, restore_command) are staged for each
  start in a memory-backed host directory mounted at `/run/controlplane-secrets`; the container
  opens the file on descriptor 9 and deletes it (see instance_secrets);
- an instance of a node with replicas runs Patroni as its container's process, with the
  member's configuration in the instance directory. Patroni includes our config file
  (`custom_conf`) where it would include `postgresql.base.conf`, and points hba_file and
  ident_file at ours, so that the image's settings and our client rules apply as for any
  instance; its password file goes on the data volume (the instance directory is read-only).
  Patroni starts Postgres through `bin/postgres` in the instance directory, which reopens
  Patroni's descriptor 9 (see local_patroni): archive_command finds the secrets as usual.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from controlplane.orchestrator.base import ContainerOptions, ExtraMount, InstanceRef
from controlplane.orchestrator.instance_secrets import CONTAINER_SECRETS_FILE, SECRETS_FD
from controlplane.orchestrator.local_patroni import SECRETS_PID
from controlplane.system.postgres import hba, scram_verifier

VOLUME_TARGET = "/var/lib/postgresql/data"
PGDATA = f"{VOLUME_TARGET}/pgdata"
SOCKET_DIR = "/var/run/postgresql"
PG_BIN = "/usr/lib/postgresql/15/bin"
ENTRYPOINT = ["tini", "--"]
# Settings the image's own PostgreSQL build needs (compose/Dockerfile.postgres writes it).
IMAGE_CONF = "/etc/controlplane/image.conf"
LABEL = "controlplane"
# Digest of the container options an instance container was made with (see options_digest).
OPTIONS_LABEL = f"{LABEL}.options"
# The container options last handed over for the instance (instance dir, see module docstring).
OPTIONS_FILE = "container-options.json"
ROLE_INSTANCE = "instance"
ROLE_DATA_ONE_OFF = "data-one-off"  # mounts the data volume: at most one may run
ROLE_TOOL_ONE_OFF = "tool-one-off"  # pgbackrest info/expire/verify with no data: may overlap
# The instance's own pgBackRest config (its repositories are mounted writable); any other
# `pgbackrest*.conf` in the instance directory is a restore source (mounted read-only).
OWN_PGBACKREST_CONFIG = "pgbackrest.conf"
CONF_FILE = "postgresql.conf"
HBA_FILE = "pg_hba.conf"
# Present while the instance admits only the superuser (an in-place restore is under way).
FENCE_FILE = "clients-fenced"
IDENT_FILE = "pg_ident.conf"
STATE_DIR = "pgbackrest"
PGPASS_FILE = "pgpass"
PASSWORD_FILE = "password"
PASSWORD_SQL_FILE = "superuser.sql"
# Exit code of the init script when PGDATA already holds a cluster.
INIT_EXISTS = 10
PATRONI = "/usr/bin/patroni"
# Patroni rewrites its password file: on the data volume, outside PGDATA (never copied).
PATRONI_PGPASS = f"{VOLUME_TARGET}/patroni.pgpass"
# The server programs Patroni runs (from the member's bin_dir).
PATRONI_PROGRAMS = (
    "initdb",
    "pg_basebackup",
    "pg_controldata",
    "pg_ctl",
    "pg_isready",
    "pg_rewind",
    "pg_waldump",
)

_START_OPTION = re.compile(r"^[a-z_]+=[A-Za-z0-9_.]+$")
_HOST_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,35}$")

HBA = hba(
    "The unix socket directory lives inside the container: only processes of the container "
    "reach it."
)

# The init one-off: check the ids, initdb into a scratch directory and rename it into place.
_INIT_SCRIPT = """\
set -eu
pgdata=$1 pwfile=$2 owner=$3 bin=$4
if [ "$(id -u):$(id -g)" != "$owner" ]; then
  echo "the image's postgres user is $(id -u):$(id -g) but the control plane's OS user is" \
       "$owner: rebuild the image with --build-arg PG_UID=... --build-arg PG_GID=..." >&2
  exit 3
fi
[ -f "$pgdata/PG_VERSION" ] && exit 10
rm -rf -- "$pgdata.init"
"$bin/initdb" -D "$pgdata.init" -U postgres -E UTF8 --locale=C.UTF-8 --data-checksums \
  --auth-local=trust --auth-host=scram-sha-256 --pwfile="$pwfile"
if [ -d "$pgdata" ]; then rmdir -- "$pgdata"; fi
mv -- "$pgdata.init" "$pgdata"
"""
_EMPTY_SCRIPT = 'rm -rf -- "$1" "$1.init" && mkdir -m 0700 -- "$1"'
# The secrets file staged for this start (memory-backed, see instance_secrets) is opened on
# descriptor 9 for Postgres and its children, then deleted: it is never in the environment,
# so neither `docker inspect` nor /proc shows it, and it does not outlive the start.
RUN_SCRIPT = f"""\
if [ -f "$0" ]; then exec {SECRETS_FD}<"$0" && rm -f -- "$0"; fi
exec "$@"
"""
# Patroni's PID in its environment, which it passes on to the Postgres it starts: the bin/postgres
# wrapper reopens Patroni's descriptor 9 from there (Patroni closes the others).
_PATRONI_SCRIPT = f'export {SECRETS_PID}=$$; exec "$@"'
# A data directory Patroni ran, given back to a plain start (see local_patroni.release_data_dir).
_RELEASE_SCRIPT = """\
cd -- "$1" || exit 0
if [ -f postgresql.base.conf ]; then mv -f postgresql.base.conf postgresql.conf; fi
rm -f patroni.dynamic.json postgresql.conf.backup pg_hba.conf.backup pg_ident.conf.backup
"""
# The pid file lets a cancel signal the exec'd process: the engine API cannot kill an exec.
_EXEC_SCRIPT = 'echo "$$" > "$0" && exec "$@"'
_KILL_SCRIPT = 'kill -s "$1" "$(cat "$0")" 2>/dev/null || true'


class MountSpec(msgspec.Struct, frozen=True, kw_only=True, order=True):
    """One mount of an instance container: a host directory (bind) or the data volume."""

    target: str
    source: str
    kind: Literal["bind", "volume"] = "bind"
    read_only: bool = False


def namespace_of(data_path: Path) -> str:
    """Short id of one control plane (its data dir): several may share an engine."""
    return hashlib.sha1(str(data_path).encode()).hexdigest()[:8]


def container_name(namespace: str, instance_id: str) -> str:
    return f"cp-{namespace}-{instance_id}"


def volume_name(namespace: str, instance_id: str) -> str:
    return f"cp-{namespace}-{instance_id}-data"


def one_off_name(namespace: str, instance_id: str, token: str) -> str:
    return f"cp-{namespace}-{instance_id}-run-{token}"


def labels(ref: InstanceRef, namespace: str, role: str) -> dict[str, str]:
    """Labels that identify what a container or volume belongs to (and let us find it)."""
    return {
        f"{LABEL}.namespace": namespace,
        f"{LABEL}.database": ref.database_id,
        f"{LABEL}.node": ref.node_name,
        f"{LABEL}.instance": ref.instance_id,
        f"{LABEL}.host": ref.host_id,
        f"{LABEL}.role": role,
        f"{LABEL}.port": str(ref.port),
    }


def instance_filter(namespace: str, instance_id: str, role: str | None = None) -> list[str]:
    """Label filters selecting one instance's containers (optionally of one role)."""
    found = [f"{LABEL}.namespace={namespace}", f"{LABEL}.instance={instance_id}"]
    if role is not None:
        found.append(f"{LABEL}.role={role}")
    return found


def _repository_options(config_text: str) -> dict[str, dict[str, str]]:
    """`repoN-<option>=value` lines of a rendered pgbackrest.conf, by `repoN`."""
    found: dict[str, dict[str, str]] = {}
    for raw in config_text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "[")) or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        match = re.fullmatch(r"(repo\d+)-([a-z0-9-]+)", key)
        if match and value:
            found.setdefault(match.group(1), {})[match.group(2)] = value
    return found


def repository_paths(config_text: str) -> list[str]:
    """The posix repository paths (`repoN-path` whose `repoN-type` is posix or unset) of a
    rendered pgbackrest.conf."""
    return sorted(
        options["path"]
        for options in _repository_options(config_text).values()
        if options.get("type", "posix") in ("posix", "cifs") and "path" in options
    )


def ca_paths(config_text: str) -> list[str]:
    """CA files and directories (`repoN-storage-ca-file`/`-ca-path`) pgBackRest must read."""
    return sorted(
        {
            value
            for options in _repository_options(config_text).values()
            for key, value in options.items()
            if key in ("storage-ca-file", "storage-ca-path")
        }
    )


def mount_root(repository_path: str) -> str:
    """The directory to mount for a repository: `<base>/databases/<database>` for our layout
    (`…/databases/<database>/<repository>/<node>/<generation>`), else the path itself."""
    normal = posixpath.normpath(repository_path)
    parts = normal.split("/")
    if len(parts) >= 6 and parts[-5] == "databases":
        return "/".join(parts[:-3])
    return normal


def repository_mounts(own_config: str | None, restore_configs: Sequence[str]) -> list[MountSpec]:
    """Posix repository mounts: those of the instance's own config writable, those only in a
    restore-source config read-only (a restore never writes to its source); CA files of object
    stores read-only."""
    writable = {mount_root(p) for p in repository_paths(own_config or "")}
    readable = {mount_root(p) for text in restore_configs for p in repository_paths(text)}
    cas = {p for text in (own_config or "", *restore_configs) for p in ca_paths(text)}
    mounts = [MountSpec(target=p, source=p) for p in writable]
    mounts += [MountSpec(target=p, source=p, read_only=True) for p in (readable - writable) | cas]
    return sorted(mounts)


def instance_mounts(
    *,
    instance_dir: str,
    secrets_dir: str,
    volume: str | None,
    repositories: Sequence[MountSpec],
) -> list[MountSpec]:
    """Every mount of a container of the instance (`volume=None`: without the data)."""
    mounts = [
        MountSpec(target=instance_dir, source=instance_dir, read_only=True),
        MountSpec(
            target=posixpath.join(instance_dir, STATE_DIR),
            source=posixpath.join(instance_dir, STATE_DIR),
        ),
        MountSpec(target=secrets_dir, source=secrets_dir, read_only=True),
        *repositories,
    ]
    if volume is not None:
        mounts.append(MountSpec(target=VOLUME_TARGET, source=volume, kind="volume"))
    return sorted(mounts)


def covers(current: Mapping[str, bool], wanted: Sequence[MountSpec]) -> bool:
    """True when a container's mounts (`target -> writable`) include every wanted mount, each
    at least as writable as wanted."""
    return all(m.target in current and (m.read_only or current[m.target]) for m in wanted)


def extra_mounts(volumes: Sequence[ExtraMount]) -> list[MountSpec]:
    """The extra volumes as bind mounts (writable, as Docker's default)."""
    return sorted(MountSpec(target=v.destination_path, source=v.host_path) for v in volumes)


def volume_of(path: str, volumes: Sequence[ExtraMount]) -> ExtraMount | None:
    """The extra volume whose destination is `path` or one of its parents (the deepest)."""
    found = [
        v
        for v in volumes
        if path == v.destination_path or path.startswith(v.destination_path.rstrip("/") + "/")
    ]
    return max(found, key=lambda v: len(v.destination_path), default=None)


def host_path(path: str, volumes: Sequence[ExtraMount]) -> str:
    """Where a path of the instance's containers lives on the host: under an extra volume's
    host path, else at the same path (our own mounts are made at the host's paths)."""
    volume = volume_of(path, volumes)
    if volume is None:
        return path
    rest = path[len(volume.destination_path) :].lstrip("/")
    return posixpath.join(volume.host_path, rest) if rest else volume.host_path


def outside_volumes(mounts: Sequence[MountSpec], volumes: Sequence[ExtraMount]) -> list[MountSpec]:
    """The mounts not already reached through an extra volume (a repository under the
    volume's destination is written there, as in pgEdge's NFS recipe)."""
    return [m for m in mounts if volume_of(m.target, volumes) is None]


def clashing_volumes(volumes: Sequence[ExtraMount], own: Sequence[MountSpec]) -> list[str]:
    """Extra volume destinations that are, or lie inside, one of the control plane's own
    mounts (they would hide its config, secrets or data)."""
    return sorted(
        v.destination_path
        for v in volumes
        if any(
            v.destination_path == m.target or v.destination_path.startswith(m.target + "/")
            for m in own
        )
    )


def container_labels(own: Mapping[str, str], options: ContainerOptions) -> dict[str, str]:
    """The spec's extra labels under the control plane's own (which win)."""
    return {**dict(options.labels), **own}


def options_digest(image: str, options: ContainerOptions) -> str:
    """A short digest of what an instance container is made with beyond our own needs: a
    running container whose digest label differs is recreated to apply new options."""
    data = msgspec.json.encode([image, options.nano_cpus, options.memory_bytes, options.labels])
    data += msgspec.json.encode(sorted(options.volumes))
    return hashlib.sha256(data).hexdigest()[:16]


def encode_options(options: ContainerOptions) -> str:
    return msgspec.json.encode(options).decode() + "\n"


def decode_options(text: str | None) -> ContainerOptions:
    """Recorded options (none recorded: no options)."""
    if not text:
        return ContainerOptions()
    return msgspec.json.decode(text, type=ContainerOptions)


def check_start_options(options: Mapping[str, str] | None) -> list[str]:
    """`key=value` items for one-off `-c` options, refused unless plainly inert."""
    items = [f"{k}={v}" for k, v in sorted((options or {}).items())]
    bad = [item for item in items if not _START_OPTION.match(item)]
    if bad:
        raise ValueError(f"unsafe start option in {bad}")
    return items


def postgres_argv(instance_dir: str, options: Sequence[str]) -> list[str]:
    """The instance container's command: take the staged secrets, run Postgres on PGDATA with
    our config file (one-off options last, so they win)."""
    argv = [
        "sh",
        "-c",
        RUN_SCRIPT,
        CONTAINER_SECRETS_FILE,
        f"{PG_BIN}/postgres",
        "-D",
        PGDATA,
        "-c",
        f"config_file={posixpath.join(instance_dir, CONF_FILE)}",
    ]
    for item in options:
        argv += ["-c", item]
    return argv


def patroni_argv(config_file: str) -> list[str]:
    """The container's command for a Patroni member: take the staged secrets (descriptor 9),
    then run Patroni with the member's configuration, its PID in its environment."""
    return [
        "sh",
        "-c",
        RUN_SCRIPT,
        CONTAINER_SECRETS_FILE,
        "sh",
        "-c",
        _PATRONI_SCRIPT,
        "sh",
        PATRONI,
        config_file,
    ]


def patroni_config(rendered: str, instance_dir: str, superuser_password: str | None) -> str:
    """A member's rendered Patroni configuration placed in this layout: our config file
    included instead of `postgresql.base.conf`, our hba and ident files, the password file on
    the data volume, and the superuser's password the database's own (every container and the
    mesh's passfile use it)."""
    config = json.loads(rendered)
    postgresql = config["postgresql"]
    postgresql["custom_conf"] = posixpath.join(instance_dir, CONF_FILE)
    postgresql["pgpass"] = PATRONI_PGPASS
    parameters = postgresql.setdefault("parameters", {})
    parameters["hba_file"] = posixpath.join(instance_dir, HBA_FILE)
    parameters["ident_file"] = posixpath.join(instance_dir, IDENT_FILE)
    if superuser_password is not None:
        postgresql["authentication"]["superuser"]["password"] = superuser_password
    return json.dumps(config, indent=2) + "\n"


def release_argv() -> list[str]:
    return ["sh", "-c", _RELEASE_SCRIPT, "sh", PGDATA]


def init_argv(password_file: str, owner: str) -> list[str]:
    """The one-off that creates the cluster (exit INIT_EXISTS when there already is one)."""
    return ["sh", "-c", _INIT_SCRIPT, "sh", PGDATA, password_file, owner, PG_BIN]


def empty_argv() -> list[str]:
    return ["sh", "-c", _EMPTY_SCRIPT, "sh", PGDATA]


def has_file_argv(name: str) -> list[str]:
    return ["test", "-f", posixpath.join(PGDATA, name)]


def exec_argv(argv: Sequence[str], pid_file: str) -> list[str]:
    """Wrap an exec'd argv so that its pid lands in `pid_file` (argv itself is exec'd)."""
    return ["sh", "-c", _EXEC_SCRIPT, pid_file, *argv]


def kill_argv(pid_file: str, signal: Literal["TERM", "KILL"]) -> list[str]:
    return ["sh", "-c", _KILL_SCRIPT, pid_file, signal]


def psql_argv(port: int, *args: str) -> list[str]:
    """psql over the container's unix socket (trust), quiet, unaligned, no psqlrc."""
    return [
        f"{PG_BIN}/psql",
        "-h",
        SOCKET_DIR,
        "-p",
        str(port),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-XAtq",
        "-v",
        "ON_ERROR_STOP=1",
        *args,
    ]


def render_postgresql_conf(settings: Mapping[str, str], instance_dir: str) -> str:
    """The instance's config file: the image's own needs, the managed settings (already
    quoted), then the paths of our hba and ident files, last so that nothing can move them."""
    lines = [
        "# Managed by controlplane: rewritten on every change of the spec.",
        f"include_if_exists = '{IMAGE_CONF}'",
    ]
    lines += [f"{key} = {value}" for key, value in sorted(settings.items())]
    lines += [
        f"hba_file = '{posixpath.join(instance_dir, HBA_FILE)}'",
        f"ident_file = '{posixpath.join(instance_dir, IDENT_FILE)}'",
    ]
    return "\n".join(lines) + "\n"


def dsn_value(value: str) -> str:
    """A libpq keyword/value DSN value, quoted when it needs to be."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_docker_hosts(text: str | None) -> dict[str, str]:
    """`id=url,id2=url2` (or one `id=url` per line, `#` comments) → {host id: engine URL}."""
    hosts: dict[str, str] = {}
    for raw in re.split(r"[,\n]", text or ""):
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        host_id, sep, url = (part.strip() for part in item.partition("="))
        if not sep or not url or not _HOST_ID.match(host_id):
            raise ValueError(f"invalid docker host {item!r}: expected id=url with id [a-z0-9-]")
        if host_id in hosts:
            raise ValueError(f"docker host {host_id} is listed twice")
        hosts[host_id] = url
    return hosts


class LineSplitter:
    """Cuts a byte stream arriving in arbitrary chunks into text lines."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        data = self._pending + chunk
        *complete, self._pending = data.split(b"\n")
        return [_decode(line) for line in complete]

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, b""
        return [_decode(rest)] if rest else []


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")


def password_sql(password: str) -> str:
    """The statement that gives the superuser the database's password (run over the socket
    after a restore brought another database's catalog)."""
    return f"ALTER ROLE postgres PASSWORD '{scram_verifier(password)}';\n"


def pgpass(password: str) -> str:
    """A libpq password file: the superuser's password on every host, port and database."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:postgres:{escaped}\n"
