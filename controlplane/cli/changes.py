"""Subcommands that start tasks: databases (create, update, delete), backups and restore.

Each prints the task it started; with `--wait` it follows the task's log live and exits 1
unless the task completes. Deleting, expiring and restoring ask for confirmation.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from controlplane.cli.output import (
    backups_table,
    database_detail,
    databases_table,
    emit,
    restore_points_table,
    tasks_table,
)
from controlplane.cli.support import (
    api_command,
    client_of,
    conclude,
    confirm,
    file_option,
    output_option,
    read_json,
    run_tasks,
    wait_option,
    yes_option,
)
from controlplane.models import DatabaseOperation, RestoreOperation


@click.group()
def database() -> None:
    """Create, inspect, update and delete databases."""


@database.command(name="create")
@file_option("body_file", "JSON body {id, spec}")
@wait_option
@output_option
@click.pass_context
@api_command
def database_create(ctx: click.Context, body_file: Any, wait: bool, output: str) -> None:
    """Create a database from a JSON spec."""
    body = read_json(body_file, "the database spec")
    with client_of(ctx) as client:
        answer = client.create_database(body)
    task, _ = run_tasks(ctx, output, wait, answer.task)
    if wait:
        with client_of(ctx) as client:
            answer = DatabaseOperation(task=task, database=client.get_database(answer.database.id))
    conclude(answer, task, output, wait, lambda: database_detail(answer.database))


@database.command(name="list")
@output_option
@click.pass_context
@api_command
def database_list(ctx: click.Context, output: str) -> None:
    """List databases."""
    with client_of(ctx) as client:
        found = client.list_databases()
    emit(found, output, lambda: databases_table(found), sys.stdout)


@database.command(name="get")
@click.argument("database_id")
@output_option
@click.pass_context
@api_command
def database_get(ctx: click.Context, database_id: str, output: str) -> None:
    """Show a database and its instances (with connection info)."""
    with client_of(ctx) as client:
        found = client.get_database(database_id)
    emit(found, output, lambda: database_detail(found), sys.stdout)


@database.command(name="update")
@click.argument("database_id")
@file_option("body_file", "JSON body {spec} with the full desired spec")
@yes_option
@wait_option
@output_option
@click.pass_context
@api_command
def database_update(
    ctx: click.Context, database_id: str, body_file: Any, yes: bool, wait: bool, output: str
) -> None:
    """Apply a full desired spec; only the difference is carried out.

    Removing nodes asks for confirmation.
    """
    body = read_json(body_file, "the database spec")
    with client_of(ctx) as client:
        current = {i.node_name for i in client.get_database(database_id).instances}
        wanted = _node_names(body)
        if wanted is not None and current - wanted:
            removed = ", ".join(sorted(current - wanted))
            confirm(yes, f"Remove node(s) {removed} of {database_id} and their data?")
        answer = client.update_database(database_id, body)
    task, _ = run_tasks(ctx, output, wait, answer.task)
    if wait:
        with client_of(ctx) as client:
            answer = DatabaseOperation(task=task, database=client.get_database(database_id))
    conclude(answer, task, output, wait, lambda: database_detail(answer.database))


def _node_names(body: Any) -> set[str] | None:
    try:
        return {str(node["name"]) for node in body["spec"]["nodes"]}
    except (KeyError, TypeError):
        return None  # malformed: the API reports it with paths


@database.command(name="delete")
@click.argument("database_id")
@yes_option
@wait_option
@output_option
@click.pass_context
@api_command
def database_delete(
    ctx: click.Context, database_id: str, yes: bool, wait: bool, output: str
) -> None:
    """Delete a database's instances (backup repositories are kept)."""
    confirm(yes, f"Delete database {database_id} and the data of all its nodes?")
    with client_of(ctx) as client:
        task = client.delete_database(database_id)
    task, _ = run_tasks(ctx, output, wait, task)
    conclude({"task": task}, task, output, wait, lambda: "")


@click.group()
def backup() -> None:
    """Take, list, verify and expire a node's backups."""


def _annotations(values: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--annotation")
        pairs[key] = text
    return pairs


@backup.command(name="start")
@click.argument("database_id")
@click.argument("node")
@click.option(
    "--type",
    "backup_type",
    type=click.Choice(["full", "diff", "incr"]),
    default="full",
    show_default=True,
    help="Backup type.",
)
@click.option("--annotation", multiple=True, help="KEY=VALUE kept with the set (repeatable).")
@click.option("--repository", "repository_id", help="Repository id (default: the first).")
@wait_option
@output_option
@click.pass_context
@api_command
def backup_start(
    ctx: click.Context,
    database_id: str,
    node: str,
    backup_type: str,
    annotation: tuple[str, ...],
    repository_id: str | None,
    wait: bool,
    output: str,
) -> None:
    """Back up one node now."""
    annotations = _annotations(annotation)
    with client_of(ctx) as client:
        task = client.start_backup(
            database_id,
            node,
            type=backup_type,
            annotations=annotations,
            repository_id=repository_id,
        )
    task, _ = run_tasks(ctx, output, wait, task)
    conclude({"task": task}, task, output, wait, lambda: "")


@backup.command(name="list")
@click.argument("database_id")
@click.argument("node")
@output_option
@click.pass_context
@api_command
def backup_list(ctx: click.Context, database_id: str, node: str, output: str) -> None:
    """List a node's backup sets (oldest first) and its recovery window."""
    with client_of(ctx) as client:
        catalog = client.list_backups(database_id, node)
    emit(catalog, output, lambda: backups_table(catalog), sys.stdout)


@backup.command(name="verify")
@click.argument("database_id")
@click.argument("node")
@click.option(
    "--drill", is_flag=True, help="Restore a set into a scratch instance and check it instead."
)
@click.option("--set", "set_label", help="With --drill: the set (default: the newest).")
@wait_option
@output_option
@click.pass_context
@api_command
def backup_verify(
    ctx: click.Context,
    database_id: str,
    node: str,
    drill: bool,
    set_label: str | None,
    wait: bool,
    output: str,
) -> None:
    """Check every set and WAL segment of a node's repository (pgbackrest verify), or with
    --drill restore one set into a scratch instance, check it and count its rows."""
    if set_label is not None and not drill:
        raise click.UsageError("--set needs --drill")
    with client_of(ctx) as client:
        task = client.verify_backups(database_id, node, drill=drill, set_label=set_label)
    task, _ = run_tasks(ctx, output, wait, task)
    conclude({"task": task}, task, output, wait, lambda: "")


@backup.command(name="expire")
@click.argument("database_id")
@click.argument("node")
@click.argument("label")
@click.option("--force", is_flag=True, help="Also when it moves the start of the recovery window.")
@yes_option
@wait_option
@output_option
@click.pass_context
@api_command
def backup_expire(
    ctx: click.Context,
    database_id: str,
    node: str,
    label: str,
    force: bool,
    yes: bool,
    wait: bool,
    output: str,
) -> None:
    """Expire one backup set (and the sets that depend on it)."""
    confirm(yes, f"Expire backup {label} of node {node} of {database_id} and its dependents?")
    with client_of(ctx) as client:
        task = client.expire_backup(database_id, node, label, force=force)
    task, _ = run_tasks(ctx, output, wait, task)
    conclude({"task": task}, task, output, wait, lambda: "")


@click.group(name="restore-point")
def restore_point() -> None:
    """Named restore points: targets for restores of type name."""


@restore_point.command(name="create")
@click.argument("database_id")
@click.argument("node")
@click.argument("name")
@output_option
@click.pass_context
@api_command
def restore_point_create(
    ctx: click.Context, database_id: str, node: str, name: str, output: str
) -> None:
    """Write restore point NAME on a running node; returns once its WAL is archived."""
    with client_of(ctx) as client:
        point = client.create_restore_point(database_id, node, name)
    emit(point, output, lambda: restore_points_table([point]), sys.stdout)


@restore_point.command(name="list")
@click.argument("database_id")
@click.argument("node")
@output_option
@click.pass_context
@api_command
def restore_point_list(ctx: click.Context, database_id: str, node: str, output: str) -> None:
    """List a node's restore points, oldest first."""
    with client_of(ctx) as client:
        points = client.list_restore_points(database_id, node)
    emit(points, output, lambda: restore_points_table(points), sys.stdout)


def build_restore_request(
    raw: Any,
    nodes: Sequence[str],
    target_time: str | None,
    backup_set: str | None,
    pre: bool,
    *,
    restore_point: str | None = None,
    xid: str | None = None,
) -> tuple[dict[str, Any], list[str], bool]:
    """(restore_config, target_nodes, pre_restore_backup) from the file and the flags."""
    flags = {"time": target_time, "name": restore_point, "xid": xid}
    given = {kind: value for kind, value in flags.items() if value is not None}
    if len(given) > 1:
        raise click.UsageError("give at most one of --time, --restore-point and --xid")
    if not isinstance(raw, dict) or not isinstance(raw.get("restore_config", {}), dict):
        raise click.BadParameter("must hold a JSON object", param_hint="--file")
    if "restore_config" in raw:
        config = dict(raw["restore_config"])
        targets = list(nodes) or list(raw.get("target_nodes") or [])
        pre = pre or bool(raw.get("pre_restore_backup"))
    else:
        config, targets = dict(raw), list(nodes)
    options = dict(config.get("restore_options") or {})
    for kind, value in given.items():
        options |= {"type": kind, "target": value}
    if backup_set is not None:
        options["set"] = backup_set
        if not given:
            for key in ("target", "target-exclusive", "target_exclusive"):
                options.pop(key, None)
            options["type"] = "immediate"
    config["restore_options"] = options
    return config, targets, pre


def _restore_target(options: dict[str, Any]) -> str:
    kind = options.get("type", "default")
    if kind == "time":
        return f"time {options.get('target')}"
    if kind == "immediate":
        return f"the end of backup {options.get('set', '(latest)')}"
    if kind == "name":
        return f"restore point {options.get('target')}"
    if kind == "xid":
        return f"transaction {options.get('target')} (inclusive)"
    if "target" in options:
        return f"{kind} {options['target']}"
    return "the latest point in the archive"


@click.command(name="restore", short_help="Restore nodes in place from a backup.")
@click.argument("database_id")
@file_option("config_file", "JSON restore_config, or a request {restore_config, target_nodes}")
@click.option("--node", "nodes", multiple=True, help="Restore this node only (repeatable).")
@click.option("--time", "target_time", help="Point in time with a zone: '2025-05-05 09:38:52+00'.")
@click.option("--restore-point", help="Name of a restore point (see `restore-point list`).")
@click.option("--xid", help="Transaction id to restore through (a committed one, 32-bit).")
@click.option("--set", "backup_set", help="Backup set label (type immediate without a target).")
@click.option("--pre-restore-backup", is_flag=True, help="Back up each node first.")
@yes_option
@wait_option
@output_option
@click.pass_context
@api_command
def restore(
    ctx: click.Context,
    database_id: str,
    config_file: Any,
    nodes: tuple[str, ...],
    target_time: str | None,
    restore_point: str | None,
    xid: str | None,
    backup_set: str | None,
    pre_restore_backup: bool,
    yes: bool,
    wait: bool,
    output: str,
) -> None:
    """Restore nodes of a database in place from a backup, optionally to a point in time, a
    restore point or a transaction."""
    config, targets, pre = build_restore_request(
        read_json(config_file, "the restore config"),
        nodes,
        target_time,
        backup_set,
        pre_restore_backup,
        restore_point=restore_point,
        xid=xid,
    )
    which = f"node(s) {', '.join(targets)}" if targets else "every node"
    target = _restore_target(config["restore_options"])
    confirm(yes, f"Restore {which} of {database_id} to {target}, replacing their data?")
    with client_of(ctx) as client:
        answer = client.restore(database_id, config, target_nodes=targets, pre_restore_backup=pre)
    task, node_tasks = run_tasks(ctx, output, wait, answer.task, answer.node_tasks)
    if wait:
        with client_of(ctx) as client:
            answer = RestoreOperation(
                task=task, node_tasks=node_tasks, database=client.get_database(database_id)
            )
    conclude(answer, task, output, wait, lambda: tasks_table(answer.node_tasks))


OPERATION_COMMANDS: tuple[click.Command, ...] = (database, backup, restore_point, restore)
