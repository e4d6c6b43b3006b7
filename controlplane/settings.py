"""Settings: built once from the environment (`CONTROLPLANE_*`) and CLI flags, then passed down."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import msgspec

_TRUE = {"1", "true", "yes", "on", "y"}
_HOST_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_FALSE = {"0", "false", "no", "off", "n"}
_AT_FIELD = re.compile(r" - at `\$\.([a-z_]+)`")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of one control plane process; see README's configuration table."""

    data_dir: Path = Path("./.controlplane")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 3000
    orchestrator: Literal["local", "docker", "swarm"] = "local"
    docker_url: str | None = None
    # Swarm orchestrator: the manager's engine URL; unset means DOCKER_HOST. Hosts are the
    # swarm's nodes labelled `controlplane.host=<host id>`.
    swarm_url: str | None = None
    # Docker orchestrator hosts: "id=url,id2=url2", or the path of a file with one id=url per
    # line; unset means one host "local" at docker_url (or DOCKER_HOST). Under the swarm
    # orchestrator: the engine of each swarm node by host id (unset: the manager's for all).
    docker_hosts: str | None = None
    instance_image: str = "controlplane/postgres:15"
    # Local orchestrator hosts: "h1,h2,h3" names hosts on this one machine, each with its own
    # directory under <data dir>/hosts/<id> (a node's replicas go on different hosts). Unset
    # means one host, "local".
    local_hosts: str | None = None
    # Patroni's DCS for nodes with replicas: "host:port,host:port" of an existing etcd (v3 API)
    # cluster. Unset: `serve` starts and supervises a one-member etcd under <data dir>/etcd.
    etcd_hosts: str | None = None
    etcd_bin: Path = Path("/usr/bin/etcd")
    patroni_bin: Path = Path("/usr/bin/patroni")
    os_user: str = "postgres"
    allow_restore: bool = True
    # Directories posix repositories may live in (comma-separated); the usual homes of backup
    # volumes and mounts (pgEdge's guide mounts its NFS share at /backups).
    backup_roots: str = "/var/backups,/srv/backups,/backups,/mnt"
    # The local orchestrator runs every database's instances as one OS user: a SUPERUSER (or a
    # CREATEROLE role, which can grant itself pg_execute_server_program) of one database could
    # reach the others' files. Refused there unless the operator declares it single-tenant.
    local_superuser: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    secret_key: str | None = None
    pg_bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    worker_concurrency: int = 8
    lease_seconds: float = 30.0
    poll_interval: float = 1.0
    monitor_interval: float = 10.0
    # How long (seconds) archiving must keep failing, or a subscription stay down, before the
    # monitor marks the database `degraded`: a restart or a brief retry does not flap its state.
    health_grace: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    task_retention_days: int = 30
    cancel_grace_seconds: float = 10.0
    retry_backoff_seconds: float = 2.0
    # Scheduled backups after downtime: run the newest missed tick ("latest") or none ("none").
    schedule_catch_up: Literal["latest", "none"] = "latest"
    # Longest sleep of the scheduler loop (it also wakes at the next due tick).
    schedule_interval: float = 1.0
    # Largest request body the API reads (bytes); bigger ones get 413 request_too_large before
    # any of it is parsed. 1 MiB is ~10x the largest realistic spec (16 nodes, each with its own
    # repositories and schedules, 64 users, 256 settings is ~120 KiB).
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024
    # Testing aid for crash tests: "<task type>:<step>" makes the server SIGKILL itself right
    # after that step commits, so every step boundary can be crashed deterministically;
    # "<task type>:<step>:<point>" crashes at a named point inside a step (StepContext.failpoint).
    crash_after_step: str | None = None

    def __post_init__(self) -> None:
        self.local_host_ids  # noqa: B018 (checked here, at start-up)
        for root in self.backup_root_paths:
            if not root.is_absolute() or str(root) == "/":
                raise ValueError(
                    f"CONTROLPLANE_BACKUP_ROOTS: {root} is not an absolute directory other than /"
                )

    @property
    def backup_root_paths(self) -> list[PurePosixPath]:
        """The directories posix repositories may live in."""
        return [PurePosixPath(p.strip()) for p in self.backup_roots.split(",") if p.strip()]

    @property
    def local_host_ids(self) -> list[str]:
        """The hosts named by CONTROLPLANE_LOCAL_HOSTS ("h1,h2,h3"), in order; ["local"] when
        unset. Every one is this machine, standing for a separate host where a node's instances
        must sit on different hosts."""
        if not self.local_hosts:
            return ["local"]
        names = [h.strip() for h in self.local_hosts.split(",") if h.strip()]
        if not names or len(set(names)) != len(names) or not all(map(_HOST_ID.match, names)):
            raise ValueError(
                "CONTROLPLANE_LOCAL_HOSTS: expected distinct host ids (lower-case letters,"
                f" digits and '-', up to 32 characters) separated by commas: {self.local_hosts!r}"
            )
        return names

    @property
    def data_path(self) -> Path:
        """The data directory as an absolute path."""
        return self.data_dir.resolve()

    @property
    def run_dir(self) -> Path:
        """Short per-data-dir directory for unix sockets (their paths are limited to ~100 bytes)."""
        digest = hashlib.sha1(str(self.data_path).encode()).hexdigest()[:10]
        return Path("/tmp") / f"cp-{digest}"

    @property
    def memory_dir(self) -> Path:
        """Per-data-dir directory in memory (/dev/shm) where secrets are staged for a container's
        start; the run dir where the machine has no /dev/shm."""
        shm = Path("/dev/shm")
        if not shm.is_dir():
            return self.run_dir / "m"
        return shm / self.run_dir.name

    @property
    def admin_token_path(self) -> Path:
        return self.data_path / "admin-token"

    @property
    def secret_key_path(self) -> Path:
        return self.data_path / "secret.key"


def load_settings(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build Settings from `CONTROLPLANE_*` variables, then apply non-None CLI overrides."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for info in msgspec.structs.fields(Settings):
        name = info.name
        variable = f"CONTROLPLANE_{name.upper()}"
        value = env.get(variable)
        if value is not None and value != "":
            try:
                raw[name] = _coerce(value, info.type)
            except ValueError as exc:
                raise ValueError(f"{variable}: {exc}") from None
            origin[name] = variable
    for name, value in (overrides or {}).items():
        if value is not None:
            raw[name] = value
            origin[name] = f"--{name.replace('_', '-')}"
    try:
        return msgspec.convert(raw, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ValueError(_name_the_source(str(exc), origin)) from None


def _name_the_source(message: str, origin: Mapping[str, str]) -> str:
    """msgspec's `Expected `int`, got `str` - at `$.port`` as `CONTROLPLANE_PORT: expected
    `int`, got `str``: the variable (or flag) a person sets, not a JSON path."""
    found = _AT_FIELD.search(message)
    if found is None:
        return message
    field = found.group(1)
    text = message[: found.start()].strip()
    return f"{origin.get(field, field)}: {text[:1].lower()}{text[1:]}"


def _coerce(value: str, annotation: Any) -> Any:
    """Interpret an environment string for a settings field (booleans accept yes/no/1/0)."""
    if annotation is bool:
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return value


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Path:
        return Path(obj)
    raise NotImplementedError(type_)
