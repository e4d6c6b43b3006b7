"""pgBackRest configuration: the per-instance config file and its secret environment (pure)."""

from __future__ import annotations

import os
import posixpath
import shlex
from collections.abc import Iterable, Mapping, Sequence
from importlib.resources import files
from pathlib import Path

import jinja2
import msgspec

from controlplane.pgbackrest.options import (
    check_custom_option,
    check_option_name,
    check_option_value,
    flag,
    is_repository_scoped,
    repository_option,
)
from controlplane.spec.models import (
    AzureRepository,
    BackupConfig,
    CifsRepository,
    GcsRepository,
    PosixRepository,
    Repository,
    S3Repository,
    repository_id,
    type_of,
)
from controlplane.system.files import write_private_file

STANZA = "db"
TEMPLATE_NAME = "pgbackrest.conf.j2"

# With archive_mode=on and this command Postgres recycles WAL as if it had been archived.
# A node without backup_config still runs with archive_mode=on because changing archive_mode
# needs a restart while changing archive_command only needs a reload: enabling backups later
# is then a config reload, not an outage.
NOOP_ARCHIVE_COMMAND = "/bin/true"

Options = dict[str, str]


class PgLocation(msgspec.Struct, frozen=True, kw_only=True):
    """Another Postgres of the same node on this machine (a streaming replica)."""

    pg_data: str
    pg_port: int
    pg_socket_dir: str


class InstanceLayout(msgspec.Struct, frozen=True, kw_only=True):
    """Where one Postgres instance lives; pgBackRest's own state goes under `instance_dir`.
    `standbys` are the node's other instances (pg2, pg3, …): with them pgBackRest finds the
    primary among all of them and can back up from a standby (`backup-standby`)."""

    instance_dir: str
    pg_data: str
    pg_port: int
    pg_socket_dir: str
    pg_user: str = "postgres"
    standbys: tuple[PgLocation, ...] = ()


class RepositoryPlan(msgspec.Struct, frozen=True, kw_only=True):
    """One repository as pgBackRest numbers it (`repo<index>`), with its resolved path."""

    index: int
    repository: Repository
    path: str
    cipher_pass: str | None = None


def repository_path(
    repository: Repository, *, database_id: str, node_name: str, generation: int
) -> str:
    """`<base_path or />/databases/<database_id>/<repository_id>/<node_name>/<generation>`."""
    base = repository.base_path or "/"
    if not base.startswith("/"):
        raise ValueError(f"repository base_path {base!r} is not absolute")
    if generation < 1:
        raise ValueError(f"repository generation must be >= 1, got {generation}")
    parts = (database_id, repository_id(repository), node_name)
    # The ids are validated upstream; refusing separators here keeps one node from ever
    # resolving into another node's (or database's) repository path.
    for part in parts:
        if not part or "/" in part or part in (".", ".."):
            raise ValueError(f"invalid repository path component {part!r}")
    return posixpath.normpath(posixpath.join(base, "databases", *parts, str(generation)))


def plan_repositories(
    config: BackupConfig,
    *,
    database_id: str,
    node_name: str,
    generations: Mapping[str, int] | None = None,
    cipher_passes: Mapping[str, str] | None = None,
) -> list[RepositoryPlan]:
    """Number the repositories in spec order and resolve each one's path and cipher passphrase.

    `generations` and `cipher_passes` are keyed by repository id; a missing generation is 1.
    """
    generations = generations or {}
    cipher_passes = cipher_passes or {}
    plans = []
    for index, repository in enumerate(config.repositories, start=1):
        rid = repository_id(repository)
        cipher_pass = cipher_passes.get(rid) if repository.cipher else None
        if repository.cipher and not cipher_pass:
            raise ValueError(f"repository {rid} is encrypted but has no cipher passphrase")
        path = repository_path(
            repository,
            database_id=database_id,
            node_name=node_name,
            generation=generations.get(rid, 1),
        )
        plans.append(
            RepositoryPlan(index=index, repository=repository, path=path, cipher_pass=cipher_pass)
        )
    return plans


def render_config(
    layout: InstanceLayout,
    repos: Sequence[RepositoryPlan],
    *,
    process_max: int,
    archive_timeout: int = 60,
    io_timeout: int | None = None,
    only_repo: int | None = None,
) -> str:
    """Render the instance's pgbackrest.conf (sections `[global]` and `[db]`, keys sorted).

    The text never contains a secret: keys and cipher passphrases go through `secret_env`.
    With `only_repo`, only that repository's options are written (global options stay the
    same): pgBackRest 2.45's `stanza-create` and `check` take no `--repo` and act on every
    configured repository, so such a file lets them act on one repository alone.
    """
    if process_max < 1 or archive_timeout < 1 or (io_timeout is not None and io_timeout < 1):
        raise ValueError("process_max, archive_timeout and io_timeout must be >= 1")
    if only_repo is not None and all(plan.index != only_repo for plan in repos):
        raise ValueError(f"no repository repo{only_repo} to render")
    global_options = _global_options(layout, process_max, archive_timeout, io_timeout)
    global_custom: Options = {}
    for plan in repos:
        if only_repo is None or plan.index == only_repo:
            global_options.update(_repository_options(plan))
        _merge_global_custom(global_custom, plan)
    # Custom options come last so an operator can override a default (e.g. compress-type=lz4).
    global_options.update(global_custom)
    db_options = {
        "pg1-path": layout.pg_data,
        "pg1-port": str(layout.pg_port),
        "pg1-socket-path": layout.pg_socket_dir,
        "pg1-user": layout.pg_user,
    }
    for index, standby in enumerate(layout.standbys, start=2):
        db_options |= {
            f"pg{index}-path": standby.pg_data,
            f"pg{index}-port": str(standby.pg_port),
            f"pg{index}-socket-path": standby.pg_socket_dir,
            f"pg{index}-user": layout.pg_user,
        }
    template = _environment().from_string(
        (files("controlplane") / "templates" / TEMPLATE_NAME).read_text(encoding="utf-8")
    )
    return template.render(
        global_options=_sorted_checked(global_options),
        stanza=STANZA,
        stanza_options=_sorted_checked(db_options),
    )


def secret_env(repos: Iterable[RepositoryPlan]) -> dict[str, str]:
    """The `PGBACKREST_REPO<N>_…` environment carrying every secret that is set.

    Give it only the repositories the command's config file names: pgBackRest counts a
    repository as configured as soon as any of its options is set, from the environment too.
    """
    env: dict[str, str] = {}
    for plan in repos:
        repo = plan.repository
        prefix = f"PGBACKREST_REPO{plan.index}_"
        candidates: dict[str, str | None] = {"CIPHER_PASS": plan.cipher_pass}
        if isinstance(repo, S3Repository):
            candidates |= {"S3_KEY": repo.s3_key, "S3_KEY_SECRET": repo.s3_key_secret}
        elif isinstance(repo, GcsRepository):
            candidates["GCS_KEY"] = repo.gcs_key
        elif isinstance(repo, AzureRepository):
            candidates["AZURE_KEY"] = repo.azure_key
        env |= {prefix + name: value for name, value in candidates.items() if value}
    return env


def archive_command(config_path: str, runner: str = "pgbackrest") -> str:
    """The `archive_command` (a shell string) that pushes WAL with this instance's config,
    through `runner` (a pgbackrest that finds the instance's secrets; see instance_secrets).

    The caller still quotes it as a postgresql.conf string value.
    """
    check_option_value("config", config_path)
    check_option_value("cmd", runner)
    # shlex.quote covers spaces and shell metacharacters; `%` must be doubled because
    # Postgres expands `%p`/`%f`/`%r` in archive_command before the shell sees it.
    config = shlex.quote(f"--config={config_path}").replace("%", "%%")
    command = shlex.quote(runner).replace("%", "%%")
    return f"{command} {config} --stanza={STANZA} archive-push %p"


def write_config_atomic(path: Path, text: str, *, uid: int | None, gid: int | None) -> bool:
    """Write the config atomically, mode 0600, owned by uid/gid; False if already there."""
    return write_private_file(path, text, uid=uid, gid=gid)


def state_dirs(layout: InstanceLayout) -> list[str]:
    """pgBackRest's per-instance lock, log and spool directories (as in the rendered config)."""
    state = posixpath.join(layout.instance_dir, "pgbackrest")
    return [posixpath.join(state, name) for name in ("lock", "log", "spool")]


def ensure_state_dirs(layout: InstanceLayout, *, uid: int | None, gid: int | None) -> None:
    """Create the state directories (0750, owned by uid/gid) before pgBackRest first runs.

    pgBackRest does not create its log-path: without it every command warns and logs nothing
    to file.
    """
    owner = (-1 if uid is None else uid, -1 if gid is None else gid)
    parent = Path(layout.instance_dir) / "pgbackrest"
    for directory in (parent, *map(Path, state_dirs(layout))):
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        if owner != (-1, -1):
            os.chown(directory, *owner)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )


def _global_options(
    layout: InstanceLayout, process_max: int, archive_timeout: int, io_timeout: int | None
) -> Options:
    lock_path, log_path, spool_path = state_dirs(layout)
    options = {
        "archive-async": flag(True),
        "archive-timeout": str(archive_timeout),
        "compress-type": "zst",
        # Per instance, not the shared /tmp/pgbackrest default: two instances on one host
        # must not block each other's backups or share an async archive spool.
        "lock-path": lock_path,
        "log-level-console": "info",
        "log-level-file": "detail",
        "log-path": log_path,
        "process-max": str(process_max),
        "spool-path": spool_path,
        "start-fast": flag(True),
    }
    if io_timeout is not None:
        options["io-timeout"] = str(io_timeout)
    return options


def _repository_options(plan: RepositoryPlan) -> Options:
    repo = plan.repository
    options: Options = {
        "type": type_of(repo),
        "path": plan.path,
        "bundle": flag(True),
        "retention-full": str(repo.retention_full),
        "retention-full-type": repo.retention_full_type,
    }
    if repo.retention_diff is not None:
        options["retention-diff"] = str(repo.retention_diff)
    if repo.storage_port is not None and not isinstance(repo, GcsRepository):
        options["storage-port"] = str(repo.storage_port)
    if repo.storage_ca_file is not None:
        options["storage-ca-file"] = repo.storage_ca_file
    if repo.storage_verify_tls is not None:
        options["storage-verify-tls"] = flag(repo.storage_verify_tls)
    if repo.cipher:
        options["cipher-type"] = "aes-256-cbc"
    options.update(_storage_options(repo))
    for key, value in repo.custom_options.items():
        name = repository_option(key)
        if name is not None:
            check_custom_option(key, value)
            options[name] = value
    return {f"repo{plan.index}-{key}": value for key, value in options.items()}


def _storage_options(repo: Repository) -> Options:
    if isinstance(repo, PosixRepository | CifsRepository):
        return {}
    if isinstance(repo, S3Repository):
        return _present(
            {
                "s3-bucket": repo.s3_bucket,
                # No region: us-east-1 through the global endpoint (pgEdge's default).
                "s3-region": repo.s3_region or "us-east-1",
                "s3-endpoint": repo.s3_endpoint
                or (f"s3.{repo.s3_region}.amazonaws.com" if repo.s3_region else "s3.amazonaws.com"),
                "s3-uri-style": repo.s3_uri_style,
                # No keys given: the instance's own credentials (instance profile, ECS task
                # role), which pgBackRest fetches and renews itself.
                "s3-key-type": "auto"
                if repo.s3_key is None and repo.s3_key_secret is None
                else None,
            }
        )
    if isinstance(repo, GcsRepository):
        return _present(
            {
                "gcs-bucket": repo.gcs_bucket,
                "gcs-endpoint": _gcs_endpoint(repo),
                # No key and no key type: the instance's service account.
                "gcs-key-type": repo.gcs_key_type or ("auto" if repo.gcs_key is None else None),
            }
        )
    return _present(
        {
            "azure-account": repo.azure_account,
            "azure-container": repo.azure_container,
            "azure-endpoint": repo.azure_endpoint,
            "azure-uri-style": repo.azure_uri_style,
        }
    )


def _gcs_endpoint(repo: GcsRepository) -> str | None:
    """pgBackRest 2.45 ignores repo-storage-port for GCS: the port must be in the endpoint."""
    if repo.storage_port is None:
        return repo.gcs_endpoint
    host = (repo.gcs_endpoint or "storage.googleapis.com").rsplit(":", 1)[0]
    return f"{host}:{repo.storage_port}"


def _present(options: Mapping[str, str | None]) -> Options:
    return {key: value for key, value in options.items() if value is not None}


def _merge_global_custom(merged: Options, plan: RepositoryPlan) -> None:
    for key, value in plan.repository.custom_options.items():
        if is_repository_scoped(key):
            continue
        check_custom_option(key, value)
        if merged.get(key, value) != value:
            raise ValueError(f"repositories disagree on custom option {key!r}")
        merged[key] = value


def _sorted_checked(options: Mapping[str, str]) -> list[tuple[str, str]]:
    # Checked here, at the last moment, so that no path into the file skips the checks:
    # a secret-named option (even from custom_options) or a line break never reaches disk.
    for key, value in options.items():
        check_option_name(key)
        check_option_value(key, value)
    return sorted(options.items())
