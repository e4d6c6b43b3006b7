"""Patroni: a node with replicas is one Patroni cluster whose members are the node's instances.

This module renders one member's configuration and talks to a member's REST API. Patroni runs
as its own process (`patroni <config file>`, as the Postgres OS user); nothing here imports it.

What Patroni 3.0.2 does with a data directory the control plane made (initdb and its own
configuration), read in its source and seen on running clusters:

- **Adoption.** With no `initialize` key in the DCS and no leader, a member whose data directory
  holds a stopped cluster records its system identifier as `initialize`, starts it as a standby
  of nobody, takes the leader lock on its next cycle and promotes it: no data is lost, and the
  timeline moves on (1 → 2). Patroni skips post_bootstrap then: it creates neither the
  replication nor the rewind role, nor sets the superuser's password, so run
  `adoption_statements(member)` on the instance first. A cluster already running as a primary
  is adopted as it runs (same postmaster, same timeline), but it keeps its running settings
  (wal_level included) until restarted, and `pending_restart` shows only after a reload: stop it
  cleanly before starting Patroni, or reload and `restart(pending_only=True)`. A running standby
  makes Patroni exit ("No initialize key in DCS and PostgreSQL is running as replica").
- **One member founds the cluster.** Only the member rendered with `initializes_cluster` has a
  `bootstrap` section (the DCS defaults, `dynamic_config`), and its bootstrap method refuses to
  run initdb: a founder whose directory is empty exits rather than create an unrelated cluster.
  The others have no `bootstrap` section: with an empty directory they wait for a leader and
  clone it (pgBackRest first when given a restore command, then pg_basebackup).
- **postgresql.conf** is renamed `postgresql.base.conf` (once), and Patroni writes its own:
  `include 'postgresql.base.conf'` (so what ours includes, `controlplane.conf`, still applies),
  then its parameters, which come later and win, `hba_file`, `ident_file` and the recovery
  settings. `CLUSTER_WIDE_ONLY` parameters go on the postmaster's command line from the DCS: they
  win over every file, a member's local value for them is dropped, and a DCS value below
  Patroni's minimum is replaced by its default.
- **pg_hba.conf** is never written, since `postgresql.pg_hba` is absent here: Patroni only points
  `hba_file` at `<data dir>/pg_hba.conf` (or the member's `hba_file`).
- **postgresql.auto.conf**: Patroni removes the recovery settings (`primary_conninfo`,
  `restore_command`, …) each time it writes postgresql.conf and keeps the rest; `ALTER SYSTEM`
  values still override its postgresql.conf, not its command line.
- **Copies.** pg_basebackup and pg_rewind bring every file of the leader's directory
  (controlplane.conf, pg_hba.conf, postgresql.base.conf, postgresql.auto.conf) to the member:
  keep per-member settings in the member's Patroni configuration, and every file there owned by
  the OS user (pg_rewind fails on a file it cannot open, and a failed rewind here makes Patroni
  clone the member again). Patroni also leaves `patroni.dynamic.json` and `*.backup` copies.

Failover: a leader that is gone (Patroni and Postgres killed) keeps its lock until its key
expires, ttl after its last update: ~20 s with the defaults here, whether or not `failover` is
called (that call waits for the outcome about 20 s, and may answer before it). A crashed primary
whose Patroni lives is restarted in place, and fails over after `primary_start_timeout`.

Replication slots: with `use_slots` Patroni keeps each replica's physical slot on the leader and
drops any slot that is neither a member's, nor permanent (`slots`), nor active. A pglogical slot
must be made permanent once its subscription has created it (`patch_config` with
`slots_config`); Patroni then copies it to the replicas, restarting their Postgres once per copy,
and it is on whichever member leads, at its position. A permanent slot that is missing Patroni
creates again: take it out (a null value) once its subscriber has left.

REST authentication: writes (`POST`, `PATCH`, `DELETE`) need `restapi.authentication`; reads do
not. Members call each other's API with their own credentials (failsafe mode does), so every
member of a cluster has the same ones, as it has the same three database roles.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import httpx
import msgspec

from controlplane.errors import DependencyError, ExternalCommandError, PreconditionError
from controlplane.system.postgres import scram_verifier

NAMESPACE = "/controlplane/"
# Patroni puts these on the postmaster's command line from the DCS; local values are dropped.
CLUSTER_WIDE_ONLY = frozenset(
    {
        "listen_addresses",
        "port",
        "cluster_name",
        "wal_level",
        "hot_standby",
        "max_connections",
        "max_wal_senders",
        "wal_keep_segments",
        "wal_keep_size",
        "max_prepared_transactions",
        "max_locks_per_transaction",
        "track_commit_timestamp",
        "max_replication_slots",
        "max_worker_processes",
        "wal_log_hints",
    }
)
# Settings Patroni needs, under the caller's: rewind needs wal_log_hints, slots need senders.
_PATRONI_PARAMETERS: dict[str, str | int] = {
    "hot_standby": "on",
    "wal_log_hints": "on",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "128MB",
}
# Patroni runs this instead of initdb: the control plane creates every cluster itself.
_REFUSE_INITDB = (
    "sh -c 'echo \"patroni does not run initdb here: the control plane creates the data"
    " directory of the first member\" >&2; exit 1'"
)
_RESTART_SKIPPED = "restart conditions are not satisfied"
_CONFIG_RETRIES = 30
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
Scalar = str | int | float | bool


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    username: str
    password: str


class LogicalSlot(msgspec.Struct, frozen=True, kw_only=True):
    """A permanent logical slot: Patroni keeps it on the leader and copies it to replicas."""

    database: str
    plugin: str


class PatroniMember(msgspec.Struct, frozen=True, kw_only=True):
    """One member of a Patroni cluster: an instance, its REST API, and the cluster it is in.

    Cluster-wide (`dynamic_config`): `parameters`, `slots`, `synchronous_mode`, the timeouts and
    `failsafe_mode` reach the DCS once, from the founder's file when the cluster is first
    initialized; change them later with `patch_config`. The member's own: `local_parameters`,
    `archive_command`, `hba_file`, `tags` and the rest, applied on `reload` of that member.
    Every member of a cluster has the same credentials.
    """

    scope: str
    name: str
    namespace: str = NAMESPACE
    rest_host: str
    rest_port: int
    rest_connect_host: str | None = None  # how others reach the REST API; rest_host if None
    rest_auth: Credentials
    etcd_hosts: tuple[str, ...]
    pg_host: str
    pg_port: int
    connect_host: str | None = None  # how the other members reach this one; pg_host if None
    data_dir: str
    bin_dir: str
    socket_dir: str
    pgpass: str
    superuser: Credentials
    replication: Credentials
    rewind: Credentials
    parameters: dict[str, Scalar] = msgspec.field(default_factory=dict)
    local_parameters: dict[str, Scalar] = msgspec.field(default_factory=dict)
    archive_command: str | None = None
    hba_file: str | None = None
    synchronous_mode: bool = False
    slots: dict[str, LogicalSlot] = msgspec.field(default_factory=dict)
    pgbackrest_restore_command: str | None = None
    # A lost leader's key expires after ttl; a replica notices within loop_wait and promotes:
    # under 30 s. Patroni wants loop_wait + 2 * retry_timeout <= ttl.
    ttl: int = 20
    loop_wait: int = 2
    retry_timeout: int = 8
    # How long a crashed primary may take to start again before its replica takes over.
    primary_start_timeout: int = 20
    maximum_lag_on_failover: int = 1024 * 1024
    failsafe_mode: bool = True
    tags: dict[str, Scalar] = msgspec.field(default_factory=dict)
    initializes_cluster: bool = False

    def __post_init__(self) -> None:
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise ValueError(
                f"member {self.name} of {self.scope}: loop_wait + 2 * retry_timeout "
                f"({self.loop_wait} + 2 * {self.retry_timeout}) exceeds ttl ({self.ttl})"
            )
        local_only = sorted(CLUSTER_WIDE_ONLY & set(self.local_parameters))
        if local_only:
            raise ValueError(
                f"member {self.name} of {self.scope}: {', '.join(local_only)} can only be set "
                "cluster-wide (parameters): Patroni ignores them in a member's configuration"
            )
        if "archive_command" in self.parameters:
            raise ValueError(
                f"cluster {self.scope}: archive_command is per member (archive_command): "
                "pgBackRest needs each member's own data directory in it"
            )

    @property
    def rest_url(self) -> str:
        """Where the control plane reaches this member's REST API."""
        return f"http://{self.rest_connect_host or self.rest_host}:{self.rest_port}"


def dynamic_config(member: PatroniMember) -> dict[str, Any]:
    """The cluster-wide configuration Patroni keeps in the DCS (`bootstrap.dcs`: used only when
    the cluster is first initialized; the same shape is what `patch_config` takes later)."""
    config: dict[str, Any] = {
        "ttl": member.ttl,
        "loop_wait": member.loop_wait,
        "retry_timeout": member.retry_timeout,
        "maximum_lag_on_failover": member.maximum_lag_on_failover,
        "primary_start_timeout": member.primary_start_timeout,
        "failsafe_mode": member.failsafe_mode,
        "synchronous_mode": member.synchronous_mode,
        "postgresql": {
            "use_pg_rewind": True,
            "use_slots": True,
            # A failed rewind leaves a damaged directory: clone the member again instead.
            "remove_data_directory_on_rewind_failure": True,
            "parameters": cluster_parameters(member),
        },
    }
    if member.slots:
        config["slots"] = slots_config(member.slots)
    return config


def cluster_parameters(member: PatroniMember) -> dict[str, Any]:
    """The Postgres settings every member runs on, as the DCS holds them."""
    return {**_PATRONI_PARAMETERS, **member.parameters}


def slots_config(slots: Mapping[str, LogicalSlot]) -> dict[str, dict[str, str]]:
    """Permanent slots as Patroni's `slots` key takes them (for `patch_config`)."""
    return {
        name: {"type": "logical", "database": slot.database, "plugin": slot.plugin}
        for name, slot in slots.items()
    }


def render_config(member: PatroniMember) -> str:
    """The member's Patroni configuration file (JSON, which Patroni's YAML reader takes).

    It holds the REST and database passwords: write it mode 0600 and never log it.
    """
    connect_host = member.connect_host or member.pg_host
    parameters: dict[str, Scalar] = {"unix_socket_directories": member.socket_dir}
    parameters.update(member.local_parameters)
    if member.archive_command is not None:
        parameters["archive_command"] = member.archive_command
    if member.hba_file is not None:
        parameters["hba_file"] = member.hba_file
    postgresql: dict[str, Any] = {
        "listen": f"{member.pg_host}:{member.pg_port}",
        "connect_address": f"{connect_host}:{member.pg_port}",
        "data_dir": member.data_dir,
        "bin_dir": member.bin_dir,
        "pgpass": member.pgpass,
        "use_unix_socket": True,
        "use_unix_socket_repl": True,
        "authentication": {
            "superuser": _auth(member.superuser),
            "replication": _auth(member.replication),
            "rewind": _auth(member.rewind),
        },
        "parameters": parameters,
        "create_replica_methods": ["basebackup"],
        "basebackup": {"checkpoint": "fast"},
    }
    if member.pgbackrest_restore_command is not None:
        postgresql["create_replica_methods"] = ["pgbackrest", "basebackup"]
        postgresql["pgbackrest"] = {
            "command": member.pgbackrest_restore_command,
            "keep_data": True,
            "no_params": True,
        }
    config: dict[str, Any] = {
        "scope": member.scope,
        "namespace": member.namespace,
        "name": member.name,
        "restapi": {
            "listen": f"{member.rest_host}:{member.rest_port}",
            "connect_address": f"{member.rest_connect_host or member.rest_host}:{member.rest_port}",
            "authentication": _auth(member.rest_auth),
        },
        "etcd3": {"hosts": list(member.etcd_hosts)},
        "postgresql": postgresql,
        "watchdog": {"mode": "off"},
        "tags": dict(member.tags),
    }
    if member.initializes_cluster:
        config["bootstrap"] = {
            "dcs": dynamic_config(member),
            "method": "controlplane",
            "controlplane": {"command": _REFUSE_INITDB, "no_params": True},
        }
    return json.dumps(config, indent=2) + "\n"


def adoption_statements(member: PatroniMember) -> list[str]:
    """SQL to run as superuser on a data directory before Patroni adopts it: the roles Patroni
    would have created after its own initdb (passwords as SCRAM verifiers, never plaintext)."""
    for creds in (member.superuser, member.replication, member.rewind):
        if not _ROLE_NAME.match(creds.username):
            raise ValueError(f"member {member.name}: role name {creds.username!r} is not plain")
    statements = [
        _upsert_role(member.superuser, "SUPERUSER"),
        _upsert_role(member.replication, "REPLICATION"),
    ]
    if member.rewind.username != member.superuser.username:
        statements.append(_upsert_role(member.rewind, "NOSUPERUSER"))
        statements += [
            f'GRANT EXECUTE ON FUNCTION pg_catalog.{function} TO "{member.rewind.username}"'
            for function in (
                "pg_ls_dir(text, boolean, boolean)",
                "pg_stat_file(text, boolean)",
                "pg_read_binary_file(text)",
                "pg_read_binary_file(text, bigint, bigint, boolean)",
            )
        ]
    return statements


def _upsert_role(creds: Credentials, option: str) -> str:
    verifier = scram_verifier(creds.password)
    name = creds.username
    return (
        "DO $adopt$ BEGIN "
        f"IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{name}') THEN "
        f'CREATE ROLE "{name}"; END IF; '
        f"ALTER ROLE \"{name}\" WITH LOGIN {option} PASSWORD '{verifier}'; END $adopt$"
    )


def _auth(creds: Credentials) -> dict[str, str]:
    return {"username": creds.username, "password": creds.password}


# -- REST API ------------------------------------------------------------------------------


class ClusterMember(msgspec.Struct, frozen=True, kw_only=True):
    """A member as `GET /cluster` shows it. `role` is leader, standby_leader, sync_standby or
    replica; `lag` is in bytes behind the leader ("unknown" when the member reports no WAL
    position; absent on the leader)."""

    name: str
    role: str
    state: str
    api_url: str | None = None
    host: str | None = None
    port: int | None = None
    timeline: int | None = None
    lag: int | Literal["unknown"] | None = None
    pending_restart: bool = False
    tags: dict[str, Any] = msgspec.field(default_factory=dict)


class ScheduledSwitchover(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None


class ClusterView(msgspec.Struct, frozen=True, kw_only=True):
    members: list[ClusterMember]
    pause: bool = False
    scheduled_switchover: ScheduledSwitchover | None = None

    @property
    def leader(self) -> ClusterMember | None:
        return next((m for m in self.members if m.role in ("leader", "standby_leader")), None)

    @property
    def replicas(self) -> list[ClusterMember]:
        return [m for m in self.members if m.role in ("replica", "sync_standby")]


class PatroniClient:
    """The REST API of one member (basic auth on every call; writes need it)."""

    def __init__(
        self,
        base_url: str,
        auth: Credentials,
        *,
        member: str,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._member = member
        self._http = httpx.AsyncClient(
            base_url=base_url,
            auth=httpx.BasicAuth(auth.username, auth.password),
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )

    @classmethod
    def for_member(cls, member: PatroniMember, **kwargs: Any) -> PatroniClient:
        return cls(member.rest_url, member.rest_auth, member=member.name, **kwargs)

    async def __aenter__(self) -> PatroniClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def cluster(self) -> ClusterView:
        """Every member as the DCS shows it, and a scheduled switchover if any."""
        response = await self._call("GET", "/cluster", "cluster view")
        self._check(response, "cluster view")
        try:
            return msgspec.json.decode(response.content, type=ClusterView)
        except msgspec.ValidationError as exc:
            raise DependencyError(
                f"patroni member {self._member} answered an unreadable cluster view: {exc}"
            ) from exc

    async def dynamic_config(self) -> dict[str, Any]:
        """The cluster-wide configuration held in the DCS."""
        for _ in range(_CONFIG_RETRIES):
            response = await self._call("GET", "/config", "configuration read")
            # 502 until the member has read the cluster's configuration from the DCS.
            if response.status_code not in (502, 503):
                break
            await asyncio.sleep(1.0)
        self._check(response, "configuration read")
        config: dict[str, Any] = response.json()
        return config

    async def health(self) -> bool:
        """True while Postgres runs on this member."""
        return await self._probe("/health")

    async def is_primary(self) -> bool:
        """True when this member holds the leader lock and runs a writable primary."""
        return await self._probe("/primary")

    async def is_replica(self, *, max_lag_bytes: int | None = None) -> bool:
        """True when this member is a running replica (within `max_lag_bytes` of the leader)."""
        query = "" if max_lag_bytes is None else f"?lag={max_lag_bytes}"
        return await self._probe("/replica" + query)

    async def switchover(
        self, leader: str, candidate: str | None = None, scheduled_at: datetime | None = None
    ) -> str:
        """Hand the leader role over from `leader` (now, or at `scheduled_at`, which needs a
        timezone). Patroni answers once it is done ('Successfully switched over to "n1b"', or
        '... instead of ...' when another member won) or scheduled."""
        body: dict[str, str] = {"leader": leader}
        if candidate is not None:
            body["candidate"] = candidate
        if scheduled_at is not None:
            if scheduled_at.tzinfo is None:
                raise ValueError("a scheduled switchover needs a timezone-aware time")
            body["scheduled_at"] = scheduled_at.isoformat()
        return await self._post("/switchover", body, "switchover")

    async def cancel_switchover(self) -> str:
        """Drop the scheduled switchover."""
        response = await self._call("DELETE", "/switchover", "switchover cancel")
        self._check(response, "switchover cancel")
        return response.text

    async def failover(self, candidate: str) -> str:
        """Make `candidate` leader without the leader's consent (it may be gone: then only once
        its key expires). Patroni answers after polling the outcome for about 20 s; a 503
        "Failover status unknown" may precede a failover that still happens: read `cluster`."""
        return await self._post("/failover", {"candidate": candidate}, "failover")

    async def restart(
        self,
        *,
        pending_only: bool = False,
        role: Literal["primary", "replica"] | None = None,
        timeout_seconds: int | None = None,
        scheduled_at: datetime | None = None,
    ) -> bool:
        """Restart this member's Postgres, now (answered once it runs again) or at
        `scheduled_at`. False when Patroni skipped it: nothing pending with `pending_only`, or
        the member is not in `role`."""
        body: dict[str, Any] = {}
        if pending_only:
            body["restart_pending"] = True
        if role is not None:
            body["role"] = role
        if timeout_seconds is not None:
            body["timeout"] = timeout_seconds
        if scheduled_at is not None:
            if scheduled_at.tzinfo is None:
                raise ValueError("a scheduled restart needs a timezone-aware time")
            body["schedule"] = scheduled_at.isoformat()
        response = await self._call("POST", "/restart", "restart", json=body)
        if response.status_code == 503 and response.text.strip() == _RESTART_SKIPPED:
            return False
        self._check(response, "restart")
        return True

    async def reload(self) -> None:
        """Make this member re-read its configuration file (and reload Postgres)."""
        await self._post("/reload", None, "reload")

    async def patch_config(self, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge `patch` into the DCS configuration (a null value removes a key); returns the
        whole configuration as stored."""
        for _ in range(_CONFIG_RETRIES):
            response = await self._call("PATCH", "/config", "configuration change", json=patch)
            # 503 while a new leader has not stored the cluster's configuration yet.
            if response.status_code != 503:
                break
            await asyncio.sleep(1.0)
        self._check(response, "configuration change")
        config: dict[str, Any] = response.json()
        return config

    async def _post(self, path: str, body: Mapping[str, Any] | None, action: str) -> str:
        if body is None:
            response = await self._call("POST", path, action)
        else:
            response = await self._call("POST", path, action, json=body)
        self._check(response, action)
        return response.text.strip()

    async def _probe(self, path: str) -> bool:
        response = await self._call("GET", path, "status probe")
        return response.status_code == 200

    async def _call(
        self, method: str, path: str, action: str, json: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        try:
            return await self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise DependencyError(
                f"{action} on patroni member {self._member} failed: its REST API at "
                f"{self._http.base_url} did not answer ({exc.__class__.__name__}: {exc})"
            ) from exc

    def _check(self, response: httpx.Response, action: str) -> None:
        if response.status_code < 300:
            return
        message = (
            f"{action} on patroni member {self._member} failed: "
            f"HTTP {response.status_code} ({_reason(response)})"
        )
        # 412: the switchover or failover is not possible (no such member, no healthy
        # candidate, wrong leader); nothing was changed.
        if response.status_code == 412:
            raise PreconditionError(message)
        raise DependencyError(message, details={"status_code": response.status_code})


def _reason(response: httpx.Response) -> str:
    """Patroni's words: its plain-text answer, or the status phrase of its HTML error pages."""
    text = response.text.strip()
    if not text or text.startswith("<"):
        return response.reason_phrase.lower()
    return text


async def wait_for_role(
    config: Mapping[str, Any],
    role: str,
    *,
    member: str,
    alive: Callable[[], Awaitable[bool]],
    log_tail: Callable[[], Awaitable[str]],
    limit: float = 600.0,
) -> None:
    """Until the member of `config` (its configuration as written) answers 200 on its REST
    API's /<role> (primary: the writable leader; replica: running in recovery); fails at once
    when its Patroni stopped (`alive`), with the end of its log."""
    url = f"http://{config['restapi']['connect_address']}/{role}"
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            if not await alive():
                raise ExternalCommandError(f"patroni of {member} stopped: {await log_tail()}")
            await asyncio.sleep(0.5)
    raise ExternalCommandError(
        f"instance {member} did not become {role} in {limit:g}s: {await log_tail()}"
    )


async def refuse_held_lock(instance_id: str, config: Mapping[str, Any]) -> None:
    """A member lost while it led (its host, its container, or its Patroni and Postgres
    killed) holds the leader lock until it expires. Started again at once, its Patroni would
    take the lock back as its own and no replica would take over: refuse until another member
    leads or the lock expired (the monitor tries again on its next pass), as if the host had
    come back after the failover; the member then rejoins as a replica."""
    hosts = [str(h) for h in config.get("etcd3", {}).get("hosts", [])]
    key = f"{config.get('namespace', '/service/')}{config['scope']}/leader"
    if await etcd_get(hosts, key) == str(config["name"]):
        raise PreconditionError(
            f"instance {instance_id} still holds its node's leader lock (it was lost while it "
            "led): it starts once another member leads or the lock expires"
        )


async def etcd_get(hosts: Sequence[str], key: str) -> str | None:
    """One key's value through etcd's v3 JSON gateway (None: absent, or etcd unreachable)."""
    body = {"key": base64.b64encode(key.encode()).decode()}
    async with httpx.AsyncClient(timeout=5) as client:
        for host in hosts:
            try:
                response = await client.post(f"http://{host}/v3/kv/range", json=body)
                response.raise_for_status()
            except httpx.HTTPError:
                continue
            kvs = response.json().get("kvs") or []
            return base64.b64decode(kvs[0]["value"]).decode() if kvs else None
    return None
