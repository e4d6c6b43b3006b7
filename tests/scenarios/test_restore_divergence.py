"""What a partial in-place restore's log says about the restored nodes and the rest."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.api import create_and_wait, database_body, full_log
from tests.support.data import (
    TABLE,
    backup,
    converged,
    on_every,
    posix,
    posix_repository,
    query,
    restore,
    restore_config,
    write,
)


async def test_partial_restore_to_a_named_set_says_where_the_node_stands(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """Only n1 restored to a named set with no type: it comes back with every row, and the log
    says so; restored from another database's backup, the log warns that it diverges."""
    database = await create_and_wait(
        api, database_body("diverged", nodes=2, backup_config=posix(repo_dir))
    )
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 51))
    await converged(database, 50)
    label = (await backup(api, "diverged", "n1"))["result"]["label"]
    await write(database, "n2", range(1001, 1051))
    await converged(database, 100)
    repository = posix_repository(repo_dir)
    config = restore_config("diverged", "n1", repository, set=label)
    result = await restore(api, "diverged", {"target_nodes": ["n1"], "restore_config": config})
    entries = await full_log(api, "diverged", result["task"]["task_id"])
    said = [e for e in entries if f"from set {label} to the latest point" in e["message"]]
    assert [e["level"] for e in said] == ["info"], [e["message"] for e in entries]
    assert "do not diverge from n2" in said[0]["message"]
    assert await query(database, "n1", "SELECT count(*) FROM items") == 100

    other = await create_and_wait(
        api, database_body("elsewhere", nodes=1, backup_config=posix(repo_dir))
    )
    await on_every(other, TABLE)
    await write(other, "n1", range(1, 11))
    await backup(api, "elsewhere", "n1")
    config = restore_config("elsewhere", "n1", repository)
    result = await restore(api, "diverged", {"target_nodes": ["n1"], "restore_config": config})
    entries = await full_log(api, "diverged", result["task"]["task_id"])
    warned = [e for e in entries if "from a backup of database elsewhere" in e["message"]]
    assert [e["level"] for e in warned] == ["warning"], [e["message"] for e in entries]
    assert "diverge from n2" in warned[0]["message"]
    assert await query(database, "n1", "SELECT count(*) FROM items") == 10
