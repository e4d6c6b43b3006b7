"""In-place restore through the API vs the same stop + `pgbackrest restore --delta` + start by hand.

Usage: .venv/bin/python -m bench.restore [--scale 50] [--runs 5]

Creates a one-node database with a posix repository, loads `pgbench -i -s SCALE`, takes a full
backup, then times, alternating which goes first:
  api   POST /v1/databases/bench/restore (latest set, immediate target) until the parent task
        is completed — every step included (validation, subscription handling, fenced start,
        normal restart, archive check)
  raw   pg_ctl stop, pgbackrest --delta --type=immediate --target-action=promote restore,
        pg_ctl start, wait until pg_is_in_recovery() is false — by hand, same config
and prints the medians and the ratio api / raw (target: <= 1.25 at scale 50).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench.harness import PG_BIN, BenchServer, compare, run_as_postgres


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cpbench-", dir="/tmp"))
    server = BenchServer(root)
    try:
        server.start()
        repo = {"type": "posix", "base_path": str(root / "repo")}
        database = server.create_database("bench", backup_config={"repositories": [repo]})
        node = database["instances"][0]
        print(f"loading pgbench scale {args.scale} …", flush=True)
        server.pgbench_init(node, args.scale)
        backup = server.post("/v1/databases/bench/nodes/n1/backups", {"type": "full"})
        server.wait_task("bench", backup["task"]["task_id"])
        instance = server.data_dir / "instances" / "bench-n1"
        restore_conf = instance / "pgbackrest-restore.conf"
        body = {
            "target_nodes": ["n1"],
            "restore_config": {
                "source_database_id": "bench",
                "source_node_name": "n1",
                "repository": repo,
                "restore_options": {"type": "immediate"},
            },
        }

        def api_restore() -> None:
            task = server.post("/v1/databases/bench/restore", body)
            server.wait_task("bench", task["task"]["task_id"], poll=0.02)

        def raw_restore() -> None:
            pgdata = str(instance / "pgdata")
            run_as_postgres([str(PG_BIN / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", pgdata])
            run_as_postgres(
                [
                    "pgbackrest",
                    f"--config={restore_conf}",
                    "--stanza=db",
                    "--delta",
                    "--type=immediate",
                    "--target-action=promote",
                    "restore",
                ]
            )
            run_as_postgres(
                [
                    str(PG_BIN / "pg_ctl"),
                    "start",
                    "-w",
                    "-D",
                    pgdata,
                    "-l",
                    str(instance / "postgres.log"),
                ]
            )
            server.wait_writable(node)

        api_restore()  # writes the restore config and warms the cache
        medians = compare([("raw", raw_restore), ("api", api_restore)], args.runs)
        print(
            f"ratio api / raw pgbackrest: {medians['api'] / medians['raw']:.3f}"
            f"  (target <= 1.25 at scale 50; scale {args.scale})"
        )
        return 0
    except (httpx.HTTPError, subprocess.CalledProcessError, AssertionError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
