"""Backup plumbing shared by workflows: a node's effective config, rendering, running pgbackrest."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controlplane.errors import ExternalCommandError, InvalidInputError
from controlplane.nodes.common import ref_of
from controlplane.orchestrator.base import InstanceRef
from controlplane.orchestrator.instance_secrets import RUNNER_FILE
from controlplane.pgbackrest import command as pgb
from controlplane.pgbackrest import info as pgb_info
from controlplane.pgbackrest.config import (
    NOOP_ARCHIVE_COMMAND,
    InstanceLayout,
    PgLocation,
    RepositoryPlan,
    archive_command,
    plan_repositories,
    render_config,
    secret_env,
    state_dirs,
)
from controlplane.spec.models import BackupConfig, DatabaseSpec, is_filesystem, repository_id
from controlplane.store import repository_keys
from controlplane.store.instances import InstanceRow
from controlplane.system.process import CommandResult, LineSink
from controlplane.tasks.context import Services, StepContext

CONFIG_FILE = "pgbackrest.conf"
# How long the catalog waits for one repository's `info`, and pgBackRest's I/O timeout then:
# an unreachable object store is reported as degraded in seconds rather than minutes.
CATALOG_DEADLINE_SECONDS = 30.0
CATALOG_IO_TIMEOUT_SECONDS = 5


def repository_config_file(index: int) -> str:
    """The config naming repository `index` alone (for commands that take no `--repo`)."""
    return f"pgbackrest.repo{index}.conf"


def effective_backup_config(spec: DatabaseSpec, node_name: str) -> BackupConfig | None:
    """A node-level backup_config replaces the database-level one whole."""
    node = next((n for n in spec.nodes if n.name == node_name), None)
    if node is not None and node.backup_config is not None:
        return node.backup_config
    return spec.backup_config


@dataclass
class BackupSetup:
    """Everything needed to run pgbackrest for one instance."""

    ref: InstanceRef
    config_path: str
    # The pgbackrest Postgres runs (archive_command, restore_command): it finds the secrets.
    runner: str = "pgbackrest"
    plans: list[RepositoryPlan] = field(default_factory=list)
    config_text: str = ""
    env: dict[str, str] = field(default_factory=dict)
    # With several repositories: per repository index, a config file (path, text) naming it
    # alone, so `stanza-create` and `check` on it do not depend on the others.
    repo_configs: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.plans)

    @property
    def archive_command(self) -> str:
        # Archiving is always on; without a repository WAL is discarded so that enabling backups
        # later takes a reload, not a restart.
        if not self.plans:
            return NOOP_ARCHIVE_COMMAND
        return archive_command(self.config_path, self.runner)

    def repo_index(self, repo_id: str | None) -> int | None:
        """pgBackRest's repo number for a repository id (None: the first)."""
        if repo_id is None:
            return None
        for plan in self.plans:
            if repository_id(plan.repository) == repo_id:
                return plan.index
        raise InvalidInputError(
            [{"path": "repository_id", "message": f"no repository {repo_id} for this node"}]
        )

    def backup_repo(self, repo_id: str | None) -> int:
        """The repo number a backup to `repo_id` (None: pgBackRest's default, repo1) lands in."""
        index = self.repo_index(repo_id)
        return self.plans[0].index if index is None else index

    def scoped(self, index: int) -> tuple[str, dict[str, str]]:
        """Config path and environment under which pgBackRest sees repository `index` alone."""
        plan = next((p for p in self.plans if p.index == index), None)
        if plan is None:
            raise ValueError(f"node {self.ref.node_name} has no repository repo{index}")
        if index not in self.repo_configs:
            return self.config_path, self.env
        return self.repo_configs[index][0], secret_env([plan])

    @property
    def repository_ids(self) -> dict[int, str]:
        return {plan.index: repository_id(plan.repository) for plan in self.plans}


async def backup_setup(
    services: Services,
    spec: DatabaseSpec,
    row: InstanceRow,
    ref: InstanceRef,
    *,
    standbys: Sequence[InstanceRow] = (),
) -> BackupSetup:
    """Plan the node's repositories (generation, passphrase) and render its config text
    (with `standbys`, the node's other instances as pg2, pg3, …)."""
    orchestrator = services.orchestrator
    setup = BackupSetup(
        ref=ref,
        config_path=orchestrator.file_path(ref, CONFIG_FILE),
        runner=orchestrator.file_path(ref, RUNNER_FILE),
    )
    config = effective_backup_config(spec, ref.node_name)
    if config is None:
        return setup
    passes = {}
    for repo in config.repositories:
        if repo.cipher:
            passes[repository_id(repo)] = await repository_keys.cipher_pass(
                services.pool, services.secret_box, ref.database_id, repository_id(repo)
            )
    generations = {k: int(v) for k, v in row.generations.items()}
    setup.plans = plan_repositories(
        config,
        database_id=ref.database_id,
        node_name=ref.node_name,
        generations=generations,
        cipher_passes=passes,
    )
    process_max = min(4, os.cpu_count() or 1)
    where = layout(services, ref, standbys)
    setup.config_text = render_config(where, setup.plans, process_max=process_max)
    setup.env = secret_env(setup.plans)
    if len(setup.plans) > 1:
        for plan in setup.plans:
            text = render_config(where, setup.plans, process_max=process_max, only_repo=plan.index)
            path = orchestrator.file_path(ref, repository_config_file(plan.index))
            setup.repo_configs[plan.index] = (path, text)
    return setup


def layout(
    services: Services, ref: InstanceRef, standbys: Sequence[InstanceRow] = ()
) -> InstanceLayout:
    orchestrator = services.orchestrator
    others = [ref_of(row) for row in standbys if row.id != ref.instance_id]
    return InstanceLayout(
        instance_dir=orchestrator.file_path(ref, ""),
        pg_data=orchestrator.data_dir(ref),
        pg_port=ref.port,
        pg_socket_dir=orchestrator.socket_dir(ref),
        pg_user="postgres",
        standbys=tuple(
            PgLocation(
                pg_data=orchestrator.data_dir(other),
                pg_port=other.port,
                pg_socket_dir=orchestrator.socket_dir(other),
            )
            for other in others
        ),
    )


async def write_backup_files(services: Services, setup: BackupSetup) -> bool:
    """Write the config, the postmaster environment and the directories pgbackrest needs.

    Returns True when the environment changed: archive-push only sees it after a restart.
    """
    orchestrator, ref = services.orchestrator, setup.ref
    if setup.enabled:
        await orchestrator.write_file(ref, CONFIG_FILE, setup.config_text)
        for index, (_, text) in sorted(setup.repo_configs.items()):
            await orchestrator.write_file(ref, repository_config_file(index), text)
        dirs = state_dirs(layout(services, ref))
        dirs += [p.path for p in setup.plans if is_filesystem(p.repository)]
        await orchestrator.make_dirs(ref, dirs)
    return await orchestrator.set_environment(ref, setup.env)


# Commands that contend with the node's own archiver for the archive lock (exit 50), and how
# long they wait for it.
_WAIT_FOR_ARCHIVE_LOCK = frozenset({"stanza-create", "stanza-upgrade", "check"})
_ARCHIVE_LOCK_WAIT = 60.0


async def run_pgbackrest(
    services: Services,
    setup: BackupSetup,
    argv: Sequence[str],
    *,
    subject: str,
    on_line: LineSink | None = None,
    one_off: bool = False,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run a pgbackrest argv next to the instance with its secrets in the environment (`env`
    replaces the node's: see `BackupSetup.scoped`); a non-zero exit raises
    ExternalCommandError in words (`subject` names what failed)."""
    orchestrator = services.orchestrator
    runner = orchestrator.run_one_off if one_off else orchestrator.exec
    command = argv[-1]
    deadline = time.monotonic() + _ARCHIVE_LOCK_WAIT
    while True:
        result = await runner(
            setup.ref, argv, env=setup.env if env is None else env, on_line=on_line
        )
        # stanza-create and check take the stanza's archive lock without waiting, and the
        # node's own asynchronous archive-push holds it for moments at a time (retrying WAL
        # that could not be pushed yet): wait for it rather than fail.
        if not (result.exit_code == 50 and command in _WAIT_FOR_ARCHIVE_LOCK):
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    if result.exit_code != 0:
        raise pgb.error_for(result.exit_code, result.tail(20), command=command, subject=subject)
    return result


async def set_up_repositories(ctx: StepContext, setup: BackupSetup) -> None:
    """Create the stanza, then `check` archiving, in each repository of the node on its own
    (pgBackRest 2.45's `stanza-create` and `check` act on every configured repository), so a
    repository that is down is named and does not keep the others from being set up; raise
    naming every one that failed."""
    failures: dict[str, str] = {}
    node = setup.ref.node_name
    # Every stanza first: a check's WAL switch starts an async archive-push, whose lock a
    # stanza-create running at the same time would collide with.
    for what, make_argv in (
        ("stanza creation", pgb.stanza_create_argv),
        ("archive check", pgb.check_argv),
    ):
        for index, rid in sorted(setup.repository_ids.items()):
            if rid in failures:
                continue
            config_path, env = setup.scoped(index)
            try:
                await run_pgbackrest(
                    ctx.services,
                    setup,
                    make_argv(config_path),
                    on_line=ctx.log.sink("pgbackrest", node=node),
                    subject=subject_of(setup.ref, f"{what} in repository {rid}"),
                    env=env,
                )
            except ExternalCommandError as exc:
                await ctx.log.warning(exc.message, node=node, repository=rid)
                failures[rid] = exc.message
    if failures:
        raise ExternalCommandError("; ".join(failures.values()))


async def read_info(
    services: Services,
    setup: BackupSetup,
    *,
    subject: str,
    repo: int | None = None,
    io_timeout: int | None = None,
) -> pgb_info.StanzaInfo:
    """`pgbackrest info` for the node's stanza (of one repository with `repo`), parsed."""
    argv = pgb.info_argv(setup.config_path, repo=repo, io_timeout=io_timeout)
    result = await run_pgbackrest(services, setup, argv, subject=subject)
    # Console log lines (warnings) may surround the JSON, which pgBackRest prints on one line.
    json_lines = [line for line in result.lines if line.startswith("[")]
    stanzas = pgb_info.parse_info(json_lines[-1].encode()) if json_lines else []
    if not stanzas:
        raise ExternalCommandError(f"{subject} failed: pgbackrest info returned no stanza")
    return stanzas[0]


def subject_of(ref: InstanceRef, what: str) -> str:
    return f"{what} of node {ref.node_name} of {ref.database_id}"


@dataclass
class RepositoryState:
    """One repository of a node as the catalog reports it, with what it holds when readable."""

    index: int
    repository_id: str
    health: pgb_info.RepositoryHealth
    stanza: pgb_info.StanzaInfo | None = None


async def read_repositories(
    services: Services,
    setup: BackupSetup,
    *,
    subject: str,
    deadline: float = CATALOG_DEADLINE_SECONDS,
) -> list[RepositoryState]:
    """`info` of every repository on its own, concurrently and bounded in time: one
    unreachable repository is reported as degraded instead of failing or stalling the rest."""

    async def read(index: int, rid: str) -> RepositoryState:
        what = f"{subject} (repository {rid})"
        try:
            stanza = await asyncio.wait_for(
                read_info(
                    services, setup, subject=what, repo=index, io_timeout=CATALOG_IO_TIMEOUT_SECONDS
                ),
                deadline,
            )
        except TimeoutError:
            message = f"repository {rid} did not answer within {deadline:.0f} s"
            return RepositoryState(
                index, rid, pgb_info.RepositoryHealth(status="degraded", message=message)
            )
        except ExternalCommandError as exc:
            return RepositoryState(
                index, rid, pgb_info.RepositoryHealth(status="degraded", message=exc.message)
            )
        return RepositoryState(index, rid, pgb_info.repository_health(stanza, index), stanza)

    ids = setup.repository_ids
    return list(await asyncio.gather(*(read(index, rid) for index, rid in sorted(ids.items()))))
