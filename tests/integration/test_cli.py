"""The `controlplane` CLI as a subprocess against a real server: create, back up, restore."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec

from controlplane.cli.output import entry_text
from controlplane.models import LogEntry
from tests.support.api import connect, create_and_wait, database_body, full_log, wait_task
from tests.support.data import checksum, posix, posix_repository, query, restore_config, write_rows
from tests.support.eventually import eventually
from tests.support.server import ServerProcess

_PROGRESS = re.compile(r"^[0-9]{2}:[0-9]{2}  (.*)$")


def cli_env(server: ServerProcess, **extra: str) -> dict[str, str]:
    """The environment of a user pointing the CLI at `server` (no server settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    return env | {"CONTROLPLANE_URL": server.url, "CONTROLPLANE_TOKEN": server.token} | extra


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-W", "error::DeprecationWarning", "-m", "controlplane", *args]


async def cli(
    server: ServerProcess, command: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `controlplane COMMAND EXTRA…` to completion with stdin closed (no terminal).

    `command` is split on spaces; arguments that may hold spaces (paths, times) go in `extra`.
    """
    return await asyncio.to_thread(
        subprocess.run,
        cli_argv(*command.split(), *extra),
        env=cli_env(server) if env is None else env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def write_json(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def progress_lines(stdout: str) -> list[str]:
    """The log lines a `--wait` printed, without their elapsed-time prefix."""
    return [m.group(1) for line in stdout.splitlines() if (m := _PROGRESS.match(line))]


def as_texts(entries: list[dict[str, Any]]) -> list[str]:
    return [entry_text(msgspec.convert(e, LogEntry)) for e in entries]


async def test_full_cycle_create_backup_and_point_in_time_restore(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """create --wait, backup --wait and restore --time --wait through the CLI leave exactly
    the rows committed before the target time, and every log line is shown once in order."""
    repo = scratch_dir / "repo"
    spec = write_json(scratch_dir / "spec.json", database_body("clidb", backup_config=posix(repo)))
    created = ok(await cli(server, "database create -f", spec, "--wait"))
    assert re.search(r"task \S+ \(create\) completed in", created.stdout)
    database = json.loads(ok(await cli(server, "database get clidb -o json")).stdout)
    assert database["state"] == "available"
    await write_rows(database, 1, 100)

    backed_up = ok(
        await cli(server, "backup start clidb n1 --type full --annotation reason=cli --wait")
    )
    catalog = json.loads(ok(await cli(server, "backup list clidb n1 -o json")).stdout)
    [backup_set] = catalog["backups"]
    assert backup_set["annotations"]["reason"] == "cli"
    assert f"backup {backup_set['label']} (full)" in backed_up.stdout
    entries = await full_log(api, "clidb", backup_set["task_id"])
    assert progress_lines(backed_up.stdout) == as_texts(entries)
    # A restore drill of that set, from the CLI: it restores the set and counts its 100 rows.
    drilled = json.loads(
        ok(
            await cli(
                server,
                "backup verify clidb n1 --drill --set",
                backup_set["label"],
                "--wait",
                "-o",
                "json",
            )
        ).stdout
    )
    assert drilled["task"]["type"] == "drill" and drilled["task"]["status"] == "completed"
    assert drilled["task"]["result"]["row_counts"]["public.items"] == 100

    await write_rows(database, 101, 100)
    expected = await checksum(database)
    target = (await query(database, "n1", "SELECT clock_timestamp()")).isoformat()
    await write_rows(database, 201, 100)
    restore = restore_config("clidb", "n1", posix_repository(repo))
    config = write_json(scratch_dir / "restore.json", restore)
    restored = ok(
        await cli(
            server, "restore clidb -f", config, "--time", target, "--yes", "--wait", "-o", "json"
        )
    )
    answer = json.loads(restored.stdout)
    assert answer["task"]["status"] == "completed"
    assert [t["status"] for t in answer["node_tasks"]] == ["completed"]
    assert answer["database"]["state"] == "available"
    assert await checksum(database) == expected
    conn = await connect(database, "n1")
    try:
        assert await conn.fetchval("SELECT count(*) FROM items") == 200
    finally:
        await conn.close()
    listed = json.loads(ok(await cli(server, "task list clidb -o json")).stdout)
    assert {"create", "node_backup", "restore", "node_restore"} <= {t["type"] for t in listed}


async def test_failing_task_makes_wait_exit_1_with_its_error(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """A backup into a repository pgBackRest cannot read fails; --wait exits 1 and prints the
    task's error, and json output reports the failed task."""
    repo = scratch_dir / "repo"
    database = await create_and_wait(api, database_body("broken", backup_config=posix(repo)))
    await write_rows(database, 1, 10)
    repo.chmod(0o000)
    try:
        failed = await cli(server, "backup start broken n1 --wait")
        as_json = await cli(server, "backup start broken n1 --wait -o json")
    finally:
        repo.chmod(0o755)
    assert failed.returncode == 1, failed.stdout
    tasks = (await api.get("/v1/databases/broken/tasks", params={"type": "node_backup"})).json()
    first = next(t for t in tasks["tasks"] if t["task_id"] in failed.stderr)
    assert first["status"] == "failed"
    assert "pgbackrest exited" in first["error"]
    assert f"error: task {first['task_id']} (node_backup) failed: {first['error']}" in failed.stderr
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["task"]["status"] == "failed"


async def test_follow_prints_every_entry_once_across_a_server_crash(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """`task log --follow` keeps following through a SIGKILLed and restarted server and ends
    with exactly the entries of the paginated log, each once, in order."""
    database = await create_and_wait(
        api, database_body("follow", backup_config=posix(scratch_dir / "repo"))
    )
    await write_rows(database, 1, 20000)
    started = json.loads(ok(await cli(server, "backup start follow n1 -o json")).stdout)
    task_id = started["task"]["task_id"]
    follower = await asyncio.create_subprocess_exec(
        *cli_argv("task", "log", "follow", task_id, "--follow", "-o", "json"),
        env=cli_env(server),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert follower.stdout is not None
        first = json.loads(await asyncio.wait_for(follower.stdout.readline(), 60))

        async def backing_up() -> bool:
            task = (await api.get(f"/v1/databases/follow/tasks/{task_id}")).json()
            steps = {s["name"]: s["status"] for s in task["steps"]}
            return steps["take_backup"] == "running"

        await eventually(backing_up, interval=0.05, what="the backup to run")
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.start)
        rest, errors = await asyncio.wait_for(follower.communicate(), 180)
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()
    assert follower.returncode == 0, errors.decode()
    followed = [first, *(json.loads(line) for line in rest.decode().splitlines())]
    async with server.client() as fresh:
        assert (await wait_task(fresh, "follow", task_id))["status"] == "completed"
        entries = await full_log(fresh, "follow", task_id)
    assert [e["entry_id"] for e in followed] == list(range(1, len(entries) + 1))
    assert [(e["entry_id"], e["message"]) for e in followed] == [
        (e["entry_id"], e["message"]) for e in entries
    ]
    assert any(e["message"].startswith("resuming task") for e in followed)


async def test_paged_log_and_token_sources(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """The admin token is found in the data dir; a read token cannot delete (exit 1, the API's
    message); pages of `task log --after/--limit` join into the whole log."""
    await create_and_wait(api, database_body("tokens"))
    local = {k: v for k, v in cli_env(server).items() if k != "CONTROLPLANE_TOKEN"}
    local["CONTROLPLANE_DATA_DIR"] = str(server.data_dir)
    listed = ok(await cli(server, "database list -o json", env=local))
    assert [d["id"] for d in json.loads(listed.stdout)] == ["tokens"]
    reader = await asyncio.to_thread(server.create_token, "reader", "read")
    as_reader = cli_env(server, CONTROLPLANE_TOKEN=reader)
    refused = await cli(server, "database delete tokens --yes", env=as_reader)
    assert refused.returncode == 1
    assert "error: token reader has scope read; this needs admin" in refused.stderr
    [task] = json.loads(ok(await cli(server, "task list tokens -o json")).stdout)
    log = f"task log tokens {task['task_id']} -o json"
    pages: list[dict[str, Any]] = []
    after = 0
    while True:
        page = json.loads(ok(await cli(server, f"{log} --after {after} --limit 7")).stdout)
        if not page["entries"]:
            break
        pages += page["entries"]
        after = page["last_entry_id"]
    whole = json.loads(ok(await cli(server, log)).stdout)
    assert pages == whole["entries"] == await full_log(api, "tokens", task["task_id"])
    assert whole["task_status"] == "completed"


async def test_invalid_spec_lists_every_problem(server: ServerProcess, scratch_dir: Path) -> None:
    """A spec the API rejects exits 1 naming each path; json output carries the details."""
    body = database_body("bad", nodes=2)
    body["spec"]["nodes"][1]["name"] = "node-two"
    body["spec"]["bogus"] = True
    spec = write_json(scratch_dir / "bad.json", body)
    human = await cli(server, "database create -f", spec)
    assert human.returncode == 1
    assert "spec.nodes[1].name:" in human.stderr
    assert "spec.bogus: unknown field" in human.stderr
    machine = await cli(server, "database create -f", spec, "-o", "json")
    assert machine.returncode == 1
    error = json.loads(machine.stdout)["error"]
    assert error["name"] == "invalid_input"
    assert error["status"] == 422
    assert "spec.nodes[1].name" in [e["path"] for e in error["details"]["errors"]]
    not_a_file = await cli(server, "database create -f", str(scratch_dir))
    assert not_a_file.returncode == 2


async def test_token_search_profiles_and_task_id_prefixes(
    server: ServerProcess, api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """Without a token anywhere the error names every place looked at; a profile of the config
    file (chosen by --profile or CONTROLPLANE_PROFILE) gives the URL and token file; a unique
    task id prefix resolves, an ambiguous one is refused listing the matches."""
    await create_and_wait(api, database_body("prof", backup_config=posix(scratch_dir / "repo")))
    config_home = scratch_dir / "config"
    bare = {k: v for k, v in cli_env(server).items() if k not in ("CONTROLPLANE_TOKEN",)}
    bare |= {"XDG_CONFIG_HOME": str(config_home), "CONTROLPLANE_DATA_DIR": str(scratch_dir / "x")}
    missing = await cli(server, "database list", env=bare)
    assert missing.returncode == 1
    for place in (
        "CONTROLPLANE_TOKEN (unset)",
        f"{config_home}/controlplane/config.toml (no such file)",
        f"{scratch_dir}/x/admin-token (no such directory",
    ):
        assert place in missing.stderr
    as_json = json.loads((await cli(server, "database list -o json", env=bare)).stdout)
    assert as_json["error"]["name"] == "missing_token"
    assert server.token not in missing.stderr + missing.stdout

    (config_home / "controlplane").mkdir(parents=True)
    (config_home / "controlplane" / "ops.token").write_text(server.token + "\n")
    (config_home / "controlplane" / "config.toml").write_text(
        f'[profiles.ops]\nurl = "{server.url}"\ntoken_file = "ops.token"\n'
    )
    no_url = {k: v for k, v in bare.items() if k != "CONTROLPLANE_URL"}
    listed = ok(await cli(server, "--profile ops database list -o json", env=no_url))
    assert [d["id"] for d in json.loads(listed.stdout)] == ["prof"]
    by_env = ok(
        await cli(server, "database list -o json", env=no_url | {"CONTROLPLANE_PROFILE": "ops"})
    )
    assert [d["id"] for d in json.loads(by_env.stdout)] == ["prof"]
    unknown = await cli(server, "--profile nope database list", env=no_url)
    assert unknown.returncode == 1
    assert "no profile nope in" in unknown.stderr
    assert "(profiles: ops)" in unknown.stderr

    started = json.loads(ok(await cli(server, "backup start prof n1 --wait -o json")).stdout)
    backup_id = started["task"]["task_id"]
    [create_id] = [
        t["task_id"]
        for t in json.loads(ok(await cli(server, "task list prof -o json")).stdout)
        if t["type"] == "create"
    ]
    shared = 0
    while backup_id.replace("-", "")[shared] == create_id.replace("-", "")[shared]:
        shared += 1
    unique = backup_id.replace("-", "")[: max(shared + 1, 6)]
    got = json.loads(ok(await cli(server, f"task get prof {unique} -o json")).stdout)
    assert got["task_id"] == backup_id
    if shared >= 6:
        ambiguous = await cli(server, f"task get prof {backup_id[:6]} -o json")
        assert ambiguous.returncode == 2
        error = json.loads(ambiguous.stdout)["error"]
        assert error["name"] == "ambiguous_task_id"
        assert sorted(error["details"]["matches"]) == sorted([backup_id, create_id])
    short = await cli(server, f"task get prof {backup_id[:5]}")
    assert short.returncode == 2
    assert "at least 6 hex digits" in short.stderr
    absent = await cli(server, "task get prof ffffffffff")
    assert absent.returncode == 1
    assert "no task of prof has an id starting with ffffffffff" in absent.stderr


async def test_token_commands_refuse_a_missing_store(
    server: ServerProcess, scratch_dir: Path
) -> None:
    """`token create` against a data dir without a store is refused (and creates nothing)
    unless --init; against the server's store it works without it."""
    empty = scratch_dir / "typo"
    env = {k: v for k, v in server.env().items() if k != "CONTROLPLANE_DATABASE_URL"}
    env["CONTROLPLANE_DATA_DIR"] = str(empty)
    refused = await asyncio.to_thread(
        subprocess.run,
        cli_argv("token", "create", "ops", "-o", "json"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1
    assert f"no state store in {empty}/store" in refused.stderr
    assert "--init" in refused.stderr
    assert json.loads(refused.stdout)["error"]["name"] == "store_not_found"
    assert not (empty / "store").exists()
    listed = await asyncio.to_thread(
        subprocess.run,
        cli_argv("token", "list", "-o", "json"),
        env=server.env(),
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    assert "admin" in [t["name"] for t in json.loads(listed.stdout)]
