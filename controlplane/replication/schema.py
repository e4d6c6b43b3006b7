"""Copy the table structure of a source node to a joining node before its data sync.

pglogical copies rows, not DDL, so the tables must exist on the joining node first. Its own
`synchronize_structure := true` was tried here (PG15, pglogical 2.4.2) and fails: it restores the
source's whole schema, including our event trigger, in one transaction and stops at the first
error, so the subscription stays `down` in a retry loop. We run `pg_dump --schema-only
--exclude-schema=pglogical` ourselves, drop the entries that belong to the replication machinery
(the pglogical extension and its comment, our event trigger) from the archive's table of
contents, and `pg_restore` the rest in one transaction with owners and grants kept (the roles
exist on every node). The event trigger is installed by `ensure_node` instead.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import tempfile
from pathlib import Path

import msgspec

from controlplane.errors import ExternalCommandError
from controlplane.replication.names import MeshNode
from controlplane.replication.tables import TRIGGER_NAME
from controlplane.system.process import as_user, run_command

# `pg_restore -l` lines look like "3301; 3466 16548 EVENT TRIGGER - cp_autorep postgres".
SKIPPED_TOC_ENTRY = re.compile(
    r"^\d+; \d+ \d+ (EXTENSION - pglogical|COMMENT - EXTENSION pglogical"
    rf"|EVENT TRIGGER - {TRIGGER_NAME}"
    # Privileges on pglogical's schema and functions (granted by ensure_node) are dumped with
    # the extension; the joining node gets them from its own ensure_node.
    r"|ACL - SCHEMA pglogical|ACL pglogical) "
)


class PgTools(msgspec.Struct, frozen=True, kw_only=True):
    """Where the PostgreSQL client programs are and which OS user runs them when we are root."""

    bin_dir: str = "/usr/lib/postgresql/15/bin"
    os_user: str = "postgres"


def filter_toc(toc: str) -> str:
    """Comment out the table-of-contents entries the joining node must not get from a dump."""
    return "\n".join(
        f";{line}" if SKIPPED_TOC_ENTRY.match(line) else line for line in toc.splitlines()
    )


async def copy_schema(source: MeshNode, target: MeshNode, tools: PgTools) -> None:
    """Dump the schema of `source` and restore it on `target` in one transaction.

    Raises ExternalCommandError naming both nodes when pg_dump or pg_restore fails; the target
    is then unchanged (single transaction).
    """
    workdir = Path(await asyncio.to_thread(_workdir, tools.os_user))
    try:
        dump, toc, listing = (workdir / name for name in ("schema.dump", "toc.txt", "use.list"))
        await _run(
            tools,
            [
                "pg_dump",
                "--schema-only",
                "--format=custom",
                "--exclude-schema=pglogical",
                f"--file={dump}",
                f"--dbname={source.dsn}",
            ],
            f"schema dump of node {source.name}",
        )
        # To a file: the listing of a large schema is longer than the output run_command keeps.
        await _run(tools, ["pg_restore", "--list", f"--file={toc}", str(dump)], "listing the dump")
        entries = await asyncio.to_thread(toc.read_text)
        await asyncio.to_thread(listing.write_text, filter_toc(entries) + "\n")
        await _run(
            tools,
            [
                "pg_restore",
                "--exit-on-error",
                "--single-transaction",
                f"--use-list={listing}",
                f"--dbname={target.dsn}",
                str(dump),
            ],
            f"schema restore from node {source.name} to node {target.name}",
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)


def _workdir(os_user: str) -> str:
    """A private directory the OS user can write (pg_dump runs as that user)."""
    path = tempfile.mkdtemp(prefix="cp-schema-")
    if os.geteuid() == 0:
        entry = pwd.getpwnam(os_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


async def _run(tools: PgTools, argv: list[str], what: str) -> None:
    program = str(Path(tools.bin_dir) / argv[0])
    result = await run_command(as_user([program, *argv[1:]], tools.os_user))
    if result.exit_code != 0:
        raise ExternalCommandError(
            f"{what} failed: {argv[0]} exited {result.exit_code}: {result.tail(10)}",
            exit_code=result.exit_code,
        )
